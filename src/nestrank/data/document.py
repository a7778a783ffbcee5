"""The document: an id, an optional title and the body text (what every corpus format reads into)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Document"]


@dataclass(frozen=True, slots=True)
class Document:
    """One document: an id, an optional title and the body text."""

    id: str
    text: str
    title: str = ""

    @property
    def full_text(self) -> str:
        """``title text`` joined by a space (the title is left out when empty)."""
        return f"{self.title} {self.text}".strip() if self.title else self.text
