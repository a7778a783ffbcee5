"""The ``nestrank`` command line: a thin Typer layer over the Python API.

Each sub-module registers its commands on :data:`app`. Heavy libraries (torch,
transformers, faiss, bm25s) are imported inside command bodies so ``nestrank --help``
stays fast.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="nestrank",
    help="Multi-stage text retrieval with LLMs: index, search, rerank, train, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def main() -> None:
    """Entry point of the ``nestrank`` script: user errors print one line, exit code 2.

    User errors are nestrank's own (:class:`~nestrank.errors.NestrankError`) and click's
    usage errors; anything else is a bug and keeps its traceback.
    """
    from nestrank.cli import commands  # noqa: F401  (registers the commands)
    from nestrank.errors import NestrankError

    try:
        app(standalone_mode=False)
    except NestrankError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise SystemExit(2) from None
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except typer.Abort:
        raise SystemExit(1) from None
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            raise SystemExit(exc.exit_code) from None
        raise
