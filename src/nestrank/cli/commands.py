"""Imports every command module so its commands register on the app."""

from nestrank.cli import (
    common,  # noqa: F401
    data,  # noqa: F401
    evaluate,  # noqa: F401
    retrieval,  # noqa: F401
)
