"""Matryoshka students: the sub-structures (an exit layer and a width) a training step samples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nestrank.errors import ConfigError
from nestrank.train.config import RerankerConfig

__all__ = ["Student", "sample_students", "student_options"]

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
