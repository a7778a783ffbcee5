"""Matryoshka distillation: cascaded self-distillation of sampled students from full-width teachers.

Cascaded self-distillation (Matryoshka Re-Ranker, section 3.2, Eq. 9) as implemented here, on
group scores ``(B, G)`` with the positive in column 0 (:mod:`nestrank.train.losses.group`).
Teachers ``T`` are full-width exits at chosen layers, read from one pass; students ``S`` are
sampled sub-structures (an exit layer and a width configuration). With ``p_x`` the softmax
of structure ``x``'s group scores divided by the temperature ``tau``, ``sg`` a stop-gradient
and ``CE`` the hard-label loss ``-log p_x[0]``::

    L = sum_{t in T} CE(s_t)
      + sum_{s in S} [ CE(s_s) + sum_{t in T, depth(t) >= depth(s)} KL(sg(p_t) || p_s) ]

each term averaged over the ``B`` queries. A student learns from every teacher that is its
super-architecture (at least as deep, full width); teachers learn from the labels only.
The KL term is ``sum_j p_t[j] (log p_t[j] - log p_s[j])``.

``distill_from="nearest"`` (the paper's cascade: a student learns from its close
super-architecture) replaces the KL sums by one term per structure. Let ``F`` be the
full-width exits scored (the teachers and the full-width students); then a full-width exit at
depth ``d`` learns from the next deeper exit of ``F`` (the deepest from the labels only) and a
compressed student at depth ``d`` from the exit of ``F`` at ``d``, or the next deeper one::

    L = sum_{x in T and S} [ CE(s_x) + KL(sg(p_{up(x)}) || p_x) ]      (no KL for the deepest of F)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nestrank.train.losses.group import check_group_scores, group_cross_entropy

if TYPE_CHECKING:
    import torch

__all__ = ["DistillationLoss", "StudentScores", "cascaded_self_distillation", "distillation_kl"]


def distillation_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean over queries of ``KL(sg(p_teacher) || p_student)`` over each group, in fp32 (no gradient to the teacher)."""
    import torch.nn.functional as F

    check_group_scores("distillation_kl student", student)
    if teacher.shape != student.shape:
        raise ValueError(f"teacher scores {tuple(teacher.shape)} do not match student scores {tuple(student.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    log_p_student = F.log_softmax(student.float() / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher.detach().float() / temperature, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)


@dataclass(frozen=True)
class StudentScores:
    """One sampled student: its exit layer, a label for logs (its config string) and its ``(B, G)`` scores.

    ``full_width``: no compression (only ``distill_from="nearest"`` uses it: such a student is one
    of the full-width exits the others learn from).
    """

    depth: int
    scores: torch.Tensor
    name: str = ""
    full_width: bool = False


@dataclass
class DistillationLoss:
    """The total loss and its parts (floats, for logging)."""

    total: torch.Tensor
    parts: dict[str, float] = field(default_factory=dict)


def cascaded_self_distillation(
    teachers: Mapping[int, torch.Tensor],
    students: Sequence[StudentScores],
    *,
    temperature: float = 1.0,
    distill_temperature: float | None = None,
    distill: bool = True,
    distill_from: str = "all",
) -> DistillationLoss:
    """Eq. 9 (see the module doc): hard-label loss of every teacher and student, plus the students' KL to their teachers.

    ``teachers`` maps an exit layer to that full-width exit's ``(B, G)`` scores;
    ``temperature`` divides scores in the hard-label terms, ``distill_temperature`` (default:
    the same) in the KL terms; ``distill=False`` drops the KL terms (the plain contrastive
    ablation). ``distill_from``: ``"all"`` (every deeper teacher) or ``"nearest"`` (the cascade,
    module doc). A student deeper than every teacher is an error: it would learn from no
    teacher, which is never what a sampling scheme intends.
    """
    import torch

    if not teachers:
        raise ValueError("cascaded_self_distillation needs at least one teacher exit")
    if distill_from not in ("all", "nearest"):
        raise ValueError(f"distill_from must be 'all' or 'nearest', got {distill_from!r}")
    tau = temperature if distill_temperature is None else distill_temperature
    nearest = distill_from == "nearest"
    full = dict(teachers) | ({s.depth: s.scores for s in students if s.full_width} if nearest else {})
    total = torch.zeros((), dtype=torch.float32, device=next(iter(teachers.values())).device)
    parts: dict[str, float] = {}

    def add(name: str, term: torch.Tensor) -> None:
        nonlocal total
        parts[name] = float(term.detach())
        total = total + term

    def learn(label: str, scores: torch.Tensor, sources: list[int]) -> None:
        add(f"ce.{label}", group_cross_entropy(scores, temperature))
        for layer in sources if distill else ():
            add(f"kl.{label}<-{layer}", distillation_kl(scores, full[layer], tau))

    for layer in sorted(teachers):
        learn(f"teacher{layer}", teachers[layer], [n for n in sorted(full) if n > layer][:1] if nearest else [])
    for index, student in enumerate(students):
        supers = [layer for layer in sorted(teachers) if layer >= student.depth]
        if not supers:
            raise ValueError(f"student {student.name or index} exits at layer {student.depth}, deeper than every "
                             f"teacher ({', '.join(map(str, sorted(teachers)))}): it has no teacher")
        if nearest:  # a full-width student: the next deeper exit of F; a compressed one: F's exit at its depth or deeper
            supers = [n for n in sorted(full) if n > student.depth or (n == student.depth and not student.full_width)]
        learn(student.name or f"student{index}", student.scores, supers[:1] if nearest else supers)
    return DistillationLoss(total, parts)
