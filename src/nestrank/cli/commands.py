"""Imports every command module so its commands register on the app."""

from nestrank.cli import (
    common,  # noqa: F401
    data,  # noqa: F401
    encode,  # noqa: F401
    evaluate,  # noqa: F401
    mine,  # noqa: F401
    pipeline,  # noqa: F401
    reproduce,  # noqa: F401
    rerank,  # noqa: F401
    retrieval,  # noqa: F401
    serve,  # noqa: F401
    train,  # noqa: F401
    tune,  # noqa: F401
)
