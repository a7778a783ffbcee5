"""``nestrank train ...``: trainers (``nestrank train retriever|reranker --config FILE.toml``).

Other trainers register on :data:`train_app`. The config is checked before any model loads
(values, files, model name, output directory); re-running an interrupted command resumes it
(:func:`nestrank.train.checkpoint.latest_checkpoint`). Launch several processes with
``torchrun --nproc-per-node N -m nestrank.train ...`` or ``accelerate launch`` (see docs/training.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from nestrank.cli.app import app
from nestrank.cli.common import check_model

if TYPE_CHECKING:
    from nestrank.train.config import TrainConfig
    from nestrank.train.loop import TrainResult

train_app = typer.Typer(help="Train retrievers and rerankers from a TOML config. Re-running an interrupted command "
                        "resumes it from the newest checkpoint (train.save_every) the same config wrote in "
                        "train.output_dir.", no_args_is_help=True)
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
    from nestrank.train.retriever import train_retriever

    _summary(train_retriever(_checked_config(config, overrides, reranker=False), progress=progress))


@train_app.command("reranker")
def train_reranker_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="Trainer TOML config with a [reranker] section "
                                         "(see recipes/).", show_default=False)],
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Override a config value: section.key=VALUE "
                                                        "(repeatable), e.g. --set reranker.stage=distill.")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Train a Matryoshka reranker: contrastive, distill (cascaded self-distillation) or compensate (V-/H-LoRA)."""
    from nestrank.train.reranker import train_reranker

    _summary(train_reranker(_checked_config(config, overrides, reranker=True), progress=progress))


def _checked_config(path: Path, overrides: list[str] | None, reranker: bool) -> TrainConfig:
    """The config file with its overrides, checked before any model loads: values, files, model name, output directory."""
    from nestrank.errors import ConfigError
    from nestrank.files import check_output
    from nestrank.models.matryoshka.checkpoint import layer_count
    from nestrank.train.config import load_config, parse_overrides

    config = load_config(path, parse_overrides(overrides or []))
    if reranker:
        config.validate_reranker(str(path))
    check_output(config.train.output_dir, directory=True, option=f"{path}: train.output_dir")
    for key, value in (("data.train_groups", config.data.train_groups), ("train.resume_from", config.train.resume_from),
                       ("reranker.init", config.reranker.init if reranker else "")):
        if value and not Path(value).exists():
            raise ConfigError(f"{path}: {key} {value} does not exist (fix: check the path)")
    check_model(config.model.backbone, f"{path}: model.backbone")
    layers = layer_count(config.model.backbone) if reranker else None
    deepest = max([*config.reranker.teachers, *config.reranker.student_depths], default=0)
    if layers is not None and deepest > layers:
        raise ConfigError(f"{path}: reranker teachers/student_depths go to layer {deepest}, but {config.model.backbone} "
                          f"has {layers} layers")
    return config


def _summary(result: TrainResult) -> None:
    if os.environ.get("RANK", "0") == "0":  # one summary line, from the main process of a distributed run
        summary = {"checkpoint": str(result.checkpoint), "steps": result.steps, "loss": result.loss,
                   "seconds": round(result.seconds, 1)}
        if result.resumed_from is not None:
            summary["resumed_from"] = str(result.resumed_from)
        typer.echo(json.dumps(summary))
