"""The ``nestrank`` command line: a thin Typer layer over the Python API.

Each sub-module registers its commands on :data:`app`. Heavy libraries (torch,
transformers, faiss, bm25s) are imported inside command bodies so ``nestrank --help``
stays fast.
"""

from __future__ import annotations

from difflib import get_close_matches
from typing import Any

import typer
from typer.core import TyperGroup

#: click's ``UsageError``, from the click Typer runs on (recent Typer vendors its own copy as ``typer._click``,
#: so ``import click`` would give a different class).
UsageError: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


class NestrankGroup(TyperGroup):
    """The root command group: a mistyped option is answered with the nearest *visible* option.

    click suggests from every option name, deprecated hidden aliases included, as
    "(Possible options: ...)"; this says "Did you mean --dataset?" for the closest visible one.
    """

    def invoke(self, ctx: Any) -> Any:
        """Run the command; rewrite a no-such-option error's suggestion on the way out."""
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            _suggest_visible_option(exc)
            raise


def _suggest_visible_option(exc: Any) -> None:
    """Replace the possibilities of click's ``NoSuchOption`` with the nearest visible option."""
    if getattr(exc, "possibilities", None) is None or exc.ctx is None:
        return
    visible = sorted({name for param in exc.ctx.command.params if not getattr(param, "hidden", False)
                      for name in (*param.opts, *param.secondary_opts)})
    nearest = get_close_matches(exc.option_name, visible, n=1)
    exc.possibilities = None
    exc.message = f"No such option: {exc.option_name}." + (f" Did you mean {nearest[0]}?" if nearest else "")


app = typer.Typer(
    name="nestrank",
    cls=NestrankGroup,
    help="Multi-stage text retrieval with LLMs: index, search, rerank, train, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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
