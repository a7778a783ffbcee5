"""``nestrank train ...``: trainers (``nestrank train retriever|reranker --config FILE.toml``).

Other trainers register on :data:`train_app`. Launch several processes with
``torchrun --nproc-per-node N -m nestrank.train ...`` or ``accelerate launch`` (see docs/training.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from nestrank.cli import app

if TYPE_CHECKING:
    from nestrank.train.loop import TrainResult

train_app = typer.Typer(help="Train retrievers and rerankers from a TOML config.", no_args_is_help=True)
app.add_typer(train_app, name="train")


@train_app.command("retriever")
def train_retriever_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="Trainer TOML config (see recipes/).",
                                         show_default=False)],
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Override a config value: section.key=VALUE "
                                                        "(repeatable), e.g. --set train.max_steps=20.")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Train a dense retriever contrastively (InfoNCE, hard + in-batch negatives, LoRA or full)."""
    from nestrank.train.config import load_config, parse_overrides
    from nestrank.train.retriever import train_retriever

    result = train_retriever(load_config(config, parse_overrides(overrides or [])), progress=progress)
    _summary(result)


@train_app.command("reranker")
def train_reranker_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="Trainer TOML config with a [reranker] section "
                                         "(see recipes/).", show_default=False)],
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Override a config value: section.key=VALUE "
                                                        "(repeatable), e.g. --set reranker.stage=distill.")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Train a Matryoshka reranker: contrastive, distill (cascaded self-distillation) or compensate (V-/H-LoRA)."""
    from nestrank.train.config import load_config, parse_overrides
    from nestrank.train.reranker import train_reranker

    _summary(train_reranker(load_config(config, parse_overrides(overrides or [])), progress=progress))


def _summary(result: TrainResult) -> None:
    if os.environ.get("RANK", "0") == "0":  # one summary line, from the main process of a distributed run
        typer.echo(json.dumps({"checkpoint": str(result.checkpoint), "steps": result.steps, "loss": result.loss,
                               "seconds": round(result.seconds, 1)}))
