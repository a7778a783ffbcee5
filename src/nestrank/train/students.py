"""Matryoshka students: the sub-structures (an exit layer and a width) a training step samples, and its passes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from nestrank.errors import ConfigError
from nestrank.train.config import RerankerConfig

__all__ = ["StepPlan", "Student", "plan_step", "sample_students", "student_options"]

_STUDENT_STREAM = 2**32 - 1  # keeps the student sampler's random stream apart from the batcher's


@dataclass(frozen=True)
class Student:
    """A sub-structure of the reranker: exit layer ``depth`` and width ``compress`` (``""`` = full width)."""

    depth: int
    compress: str = ""

    @property
    def name(self) -> str:
        """Its Matryoshka config string, e.g. ``depth=15,compress=8:0.5``."""
        return f"depth={self.depth}" + (f",compress={self.compress}" if self.compress else "")


def student_options(config: RerankerConfig, teachers: Sequence[int]) -> list[Student]:
    """Every student a step can sample: a depth and a width that compresses before it.

    A full-width student at a teacher's depth is left out (it would be that teacher).
    """
    from nestrank.models import parse_config

    options = []
    for depth in sorted(set(config.student_depths)):
        for compress in dict.fromkeys(config.student_compress):
            steps = parse_config(f"compress={compress}" if compress else None).compress
            if (steps and steps[-1].layer >= depth) or (not compress and depth in teachers):
                continue
            options.append(Student(depth, compress))
    return options


def sample_students(options: Sequence[Student], count: int, seed: int, step: int) -> list[Student]:
    """``count`` distinct students for ``step``: a depth uniformly, then a width uniformly among that depth's options.

    A pure function of ``(seed, step)``, so a resumed run samples what an uninterrupted one did.
    """
    if count > len(options):
        raise ConfigError(f"reranker.students_per_step {count} exceeds the {len(options)} distinct students the "
                          "depths and widths allow (fix: lower it, or add student_depths / student_compress)")
    rng = np.random.default_rng([seed, step, _STUDENT_STREAM])
    depths = sorted({s.depth for s in options})
    chosen: list[Student] = []
    while len(chosen) < count:
        depth = depths[int(rng.integers(len(depths)))]
        widths = [s for s in options if s.depth == depth]
        pick = widths[int(rng.integers(len(widths)))]
        if pick not in chosen:
            chosen.append(pick)
    return chosen


@dataclass(frozen=True)
class StepPlan:
    """What one training step scores: every structure is read from the passes listed here.

    ``full``: full-width exits read (with gradients) from the full-width pass; ``frozen``: the
    teacher exits read without the compensation and without gradients (``compensate`` with
    frozen teachers), else empty; ``widths``: one pass per compressed width, ``(compress value,
    exits)``; ``students``: the step's students (the structures besides the teachers).
    """

    full: tuple[int, ...]
    frozen: tuple[int, ...]
    widths: tuple[tuple[str, tuple[int, ...]], ...]
    students: list[Student] = field(default_factory=list)


def plan_step(config: RerankerConfig, teachers: Sequence[int], options: Sequence[Student], seed: int,
              step: int) -> StepPlan:
    """The structures of step ``step`` (a pure function of ``(seed, step)``), as ``config.exits`` says.

    ``sampled``: ``students_per_step`` students (:func:`sample_students`), a compressed one with a
    pass of its own. ``all``: every full-width exit of ``teachers`` and ``student_depths``, and
    ``students_per_step`` distinct compressed widths drawn uniformly, each pass reading every
    student depth after its last compression.
    """
    from nestrank.models import parse_config

    frozen_teachers = config.stage == "compensate" and config.compensation_teachers == "frozen"
    if config.exits == "sampled":
        students = sample_students(options, config.students_per_step, seed, step) if options else []
        full_students = [s.depth for s in students if not s.compress]
        widths = tuple((s.compress, (s.depth,)) for s in students if s.compress)
    else:
        compressed = [w for w in dict.fromkeys(config.student_compress) if w]
        if config.students_per_step > len(compressed):
            raise ConfigError(f"reranker.students_per_step {config.students_per_step} exceeds the {len(compressed)} "
                              "compressed widths of student_compress (with exits = \"all\" a step samples widths; "
                              "fix: lower it or add widths)")
        rng = np.random.default_rng([seed, step, _STUDENT_STREAM])
        picked = [compressed[int(i)] for i in rng.permutation(len(compressed))[:config.students_per_step]]
        depths = sorted(set(config.student_depths))
        widths = tuple((w, tuple(d for d in depths if d > parse_config(f"compress={w}").compress[-1].layer))
                       for w in picked)
        full_students = [d for d in depths if d not in teachers or not frozen_teachers]
        students = [Student(d) for d in full_students if d not in teachers] + \
            [Student(d, w) for w, exits in widths for d in exits]
    if frozen_teachers:
        return StepPlan(tuple(sorted(set(full_students))), tuple(sorted(teachers)), widths, students)
    return StepPlan(tuple(sorted(set(teachers) | set(full_students))), (), widths, students)
