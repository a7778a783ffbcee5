"""The root Typer application every command module registers on (kept apart so command modules do not
import the package that imports them)."""

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
