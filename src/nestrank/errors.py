"""Exceptions raised by nestrank.

Every error about user input names *what* is wrong, *where* (file and line when there is
one) and, when we can tell, *how to fix it*.
"""

from __future__ import annotations

from pathlib import Path


class NestrankError(Exception):
    """Base class of all nestrank errors."""


class DataFormatError(NestrankError, ValueError):
    """A data file is malformed: names the file, the 1-based line and the fix."""

    def __init__(
        self,
        path: str | Path | None,
        line: int | None,
        problem: str,
        fix: str | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.line = line
        self.problem = problem
        self.fix = fix
        where = self.path or "<input>"
        if line is not None:
            where = f"{where}:{line}"
        message = f"{where}: {problem}"
        if fix:
            message += f" (fix: {fix})"
        super().__init__(message)


class ArtifactError(DataFormatError):
    """An index, embeddings directory or checkpoint is damaged, incomplete, or was built from other inputs.

    Names the file and the fix (usually: rebuild or re-save it), like :class:`DataFormatError`.
    """


class ConfigError(NestrankError, ValueError):
    """A configuration value or string is invalid."""


class ArgumentTypeError(NestrankError, TypeError):
    """An argument of a public function has the wrong type; the message names the parameter and what it takes."""


class UnknownIdError(NestrankError, KeyError):
    """A query or document id is not in the queries or corpus it was looked up in.

    A :class:`KeyError`, so ``Mapping`` semantics hold (``in``, ``.get``); its message prints
    without the quotes ``KeyError`` adds.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
