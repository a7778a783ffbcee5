"""The ``nestrank`` command line: a thin Typer layer over the Python API.

Each sub-module registers its commands on :data:`app`. Heavy libraries (torch,
transformers, faiss, bm25s) are imported inside command bodies so ``nestrank --help``
stays fast.
"""

from __future__ import annotations

import typer

from nestrank.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    """Entry point of the ``nestrank`` script.

    Usage errors (unknown command or option, missing or malformed value) print click's usage
    message and exit 2, as Typer does. nestrank's own errors
    (:class:`~nestrank.errors.NestrankError`) print one line and exit 2; an ``OSError``
    (disk full, permission denied...) one line and exit 1. SIGINT and SIGTERM print one
    line and exit 130 and 143 (:mod:`nestrank.cli.interrupts`). Anything else is a bug and
    keeps its traceback.
    """
    from nestrank.cli.interrupts import Interrupted, raising_on_signals
    from nestrank.errors import NestrankError

    with raising_on_signals():
        try:
            from nestrank.cli import commands  # noqa: F401  (registers the commands)

            app(prog_name="nestrank")  # standalone: Typer shows usage errors itself, exits with the command's status
        except NestrankError as exc:
            _error(f"error: {exc}")
            raise SystemExit(2) from None
        except Interrupted as exc:
            _error(f"interrupted ({exc.name}): no partial output was written; run the same command again to "
                   "continue (rerank, pipeline run, encode, tune and train resume where they stopped)")
            raise SystemExit(exc.exit_code) from None
        except OSError as exc:
            _error(f"error: {exc}")
            raise SystemExit(1) from None


def _error(message: str) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
