"""Reranker losses: group contrast and cascaded self-distillation (Eq. 9) against hand computations."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from nestrank.models.matryoshka import MatryoshkaReranker  # noqa: E402
from nestrank.models.tiny import byte_tokenizer, tiny_llama  # noqa: E402
from nestrank.train.losses import (  # noqa: E402
    StudentScores,
    cascaded_self_distillation,
    distillation_kl,
    group_cross_entropy,
)


def log_softmax(row: list[float], tau: float) -> list[float]:
    scaled = [x / tau for x in row]
    top = max(scaled)
    norm = top + math.log(sum(math.exp(x - top) for x in scaled))
    return [x - norm for x in scaled]


def hand_ce(rows: list[list[float]], tau: float) -> float:
    return sum(-log_softmax(row, tau)[0] for row in rows) / len(rows)


def hand_kl(student: list[list[float]], teacher: list[list[float]], tau: float) -> float:
    total = 0.0
    for s, t in zip(student, teacher, strict=True):
        ls, lt = log_softmax(s, tau), log_softmax(t, tau)
        total += sum(math.exp(b) * (b - a) for a, b in zip(ls, lt, strict=True))
    return total / len(student)


def test_group_cross_entropy_and_kl_match_hand_computation():
    s = [[2.0, 1.0, -1.0], [0.5, 0.7, 0.1]]
    t = [[3.0, 0.0, -2.0], [1.0, 0.2, 0.3]]
    assert group_cross_entropy(torch.tensor(s), 0.5).item() == pytest.approx(hand_ce(s, 0.5), rel=1e-6)
    assert distillation_kl(torch.tensor(s), torch.tensor(t), 2.0).item() == pytest.approx(hand_kl(s, t, 2.0), rel=1e-5)
    assert distillation_kl(torch.tensor(t), torch.tensor(t)).item() == pytest.approx(0.0, abs=1e-7)


def test_kl_sends_no_gradient_to_the_teacher():
    student = torch.tensor([[1.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 1.0]], requires_grad=True)
    distillation_kl(student, teacher).backward()
    assert teacher.grad is None and student.grad is not None and student.grad.abs().sum() > 0


def test_eq9_on_a_tiny_model_matches_hand_computation():
    """Teachers at layers 3 and 6 (full width) and two students read from a tiny Llama; Eq. 9 by hand."""
    reranker = MatryoshkaReranker(tiny_llama(), byte_tokenizer())
    query = "what did the cat do"
    groups = [["the cat sat on the mat", "dogs bark loudly at night", "rain falls on the town square"],
              ["a cat naps in the sun all day", "stocks fell", "the mat is red and blue and green"]]

    def table(**kwargs):
        return [reranker.score(query, docs, **kwargs).tolist() for docs in groups]

    teachers = {layer: [reranker.score(query, docs, config=f"depth={layer}").tolist() for docs in groups]
                for layer in (3, 6)}
    students = {"depth=2,compress=1:0.5": (2, table(config="depth=2,compress=1:0.5")),
                "depth=5,compress=2:0.5": (5, table(config="depth=5,compress=2:0.5"))}
    tau, distill_tau = 0.5, 2.0
    result = cascaded_self_distillation(
        {layer: torch.tensor(rows) for layer, rows in teachers.items()},
        [StudentScores(depth, torch.tensor(rows), name) for name, (depth, rows) in students.items()],
        temperature=tau, distill_temperature=distill_tau)

    expected = hand_ce(teachers[3], tau) + hand_ce(teachers[6], tau)
    expected += hand_ce(students["depth=2,compress=1:0.5"][1], tau)
    expected += hand_kl(students["depth=2,compress=1:0.5"][1], teachers[3], distill_tau)
    expected += hand_kl(students["depth=2,compress=1:0.5"][1], teachers[6], distill_tau)
    expected += hand_ce(students["depth=5,compress=2:0.5"][1], tau)
    expected += hand_kl(students["depth=5,compress=2:0.5"][1], teachers[6], distill_tau)  # layer 3 is shallower
    assert result.total.item() == pytest.approx(expected, rel=1e-5)
    assert "kl.depth=5,compress=2:0.5<-3" not in result.parts
    assert set(result.parts) == {"ce.teacher3", "ce.teacher6", "ce.depth=2,compress=1:0.5",
                                 "kl.depth=2,compress=1:0.5<-3", "kl.depth=2,compress=1:0.5<-6",
                                 "ce.depth=5,compress=2:0.5", "kl.depth=5,compress=2:0.5<-6"}


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="no teacher"):
        cascaded_self_distillation({3: torch.zeros(1, 2)}, [StudentScores(4, torch.zeros(1, 2), "deep")])
    with pytest.raises(ValueError, match="at least one teacher"):
        cascaded_self_distillation({}, [])
    with pytest.raises(ValueError, match="G >= 2"):
        group_cross_entropy(torch.zeros(3))
    with pytest.raises(ValueError, match="do not match"):
        distillation_kl(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="temperature"):
        group_cross_entropy(torch.zeros(1, 2), temperature=0)
