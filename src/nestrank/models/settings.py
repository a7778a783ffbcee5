"""What a model directory holds: the ``nestrank.json`` settings of a nestrank checkpoint, and its kind.

A checkpoint written by nestrank carries ``nestrank.json``, tagged by ``kind``
(``matryoshka``, ``pointwise`` or ``dense-encoder``). :func:`detect_kind` is the one place the
kind of a model is worked out; :func:`read_settings` is the one place ``nestrank.json`` is read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from nestrank.errors import ConfigError

SETTINGS_FILE = "nestrank.json"
Kind = Literal["matryoshka", "pointwise", "dense-encoder"]
KINDS: tuple[str, ...] = ("matryoshka", "pointwise", "dense-encoder")


def detect_kind(name_or_path: str | Path) -> Kind:
    """The kind of model ``name_or_path`` is, read from its files without loading weights.

    - a nestrank checkpoint: the ``kind`` of its ``nestrank.json``;
    - a SEQ_CLS PEFT adapter (the RankLLaMA layout) or a ``*ForSequenceClassification``
      directory: ``pointwise``;
    - anything else (a causal LM directory, a GGUF file, a preset, a hub id): ``matryoshka``,
      the zero-shot reranker any Llama-family backbone gives.

    Raises:
        ConfigError: ``nestrank.json`` cannot be read or names an unknown kind.
    """
    from nestrank.models.presets import local_path

    path = local_path(name_or_path)
    settings = _settings_file(path, "checkpoint")
    if settings is not None:
        kind = settings.get("kind")
        if kind not in KINDS:
            raise ConfigError(f"{path / SETTINGS_FILE}: unknown checkpoint kind {kind!r} (known: {', '.join(KINDS)})")
        return kind
    if (path / "adapter_config.json").is_file():
        return "pointwise" if adapter_task(path) == "SEQ_CLS" else "matryoshka"
    config_file = path / "config.json"
    if config_file.is_file():
        architectures = json.loads(config_file.read_text(encoding="utf-8")).get("architectures") or []
        if any(name.endswith("ForSequenceClassification") for name in architectures):
            return "pointwise"
    return "matryoshka"


def adapter_task(adapter: str | Path) -> str | None:
    """The ``task_type`` of the PEFT adapter directory ``adapter`` (``SEQ_CLS``, ``CAUSAL_LM``...)."""
    return json.loads((Path(adapter) / "adapter_config.json").read_text(encoding="utf-8")).get("task_type")


def read_settings(directory: str | Path, kind: Kind, *, model: str, what: str = "checkpoint") -> dict[str, Any] | None:
    """The ``nestrank.json`` of ``directory`` when it has one (else ``None``), checked to be of ``kind``.

    Errors say "cannot read the {what} settings" and "not a {model} checkpoint". Raises
    :class:`ConfigError` naming the file when it cannot be read, is not a JSON object, or was
    written for another kind of model.
    """
    settings = _settings_file(Path(directory), what)
    found = None if settings is None else settings.get("kind")
    if settings is not None and found != kind:
        raise ConfigError(f"{Path(directory) / SETTINGS_FILE}: not a {model} checkpoint (its kind is {found!r}; fix: "
                          "load it with the class that wrote it)")
    return settings


def _settings_file(directory: Path, what: str) -> dict[str, Any] | None:
    """``directory/nestrank.json`` parsed (a JSON object), or ``None`` when there is none."""
    file = directory / SETTINGS_FILE
    if not file.is_file():
        return None
    try:
        settings = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read the {what} settings ({exc}) (fix: restore or delete the file)"
                          ) from None
    return settings if isinstance(settings, dict) else {}
