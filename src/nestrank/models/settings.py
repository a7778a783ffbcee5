"""What a model directory holds: the ``nestrank.json`` settings of a nestrank checkpoint, and its kind.

A checkpoint written by nestrank carries ``nestrank.json``, tagged by ``kind``
(``matryoshka``, ``pointwise`` or ``dense-encoder``). :func:`detect_kind` is the one place the
kind of a model is worked out; :func:`read_settings` is the one place ``nestrank.json`` is read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from nestrank.errors import ArtifactError, ConfigError

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
    return _adapter_config(Path(adapter)).get("task_type")


def _adapter_config(adapter: Path) -> dict[str, Any]:
    file = adapter / "adapter_config.json"
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{file}: cannot read the adapter config ({exc}) (fix: restore or delete the file)") from None
    return config if isinstance(config, dict) else {}


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


#: The fix for a damaged checkpoint.
RESAVE = "copy the checkpoint again from where it came from, or save (train) it again"


def verify_checkpoint(name_or_path: str | Path, verify: str = "fast", *, what: str,
                      base: str | None = None) -> dict[str, Any] | None:
    """Check a model directory nestrank wrote against its ``checksums.json``; returns what it was built from.

    Applies to directories with a ``nestrank.json`` or a ``checksums.json``; one of an older
    nestrank (no checksums) loads with a one-line warning; other models (presets, hub ids,
    third-party directories) are left alone and give ``None``. ``base`` is the base model the
    checkpoint is loaded on (default: the one its ``adapter_config.json`` names): when the
    record names the same base, its weights must be those the checkpoint was trained on. See
    :mod:`nestrank.integrity`.

    Raises:
        ArtifactError: a listed file is missing, truncated or damaged (naming it), or the base
            model's weights changed since the checkpoint was written.
    """
    from nestrank.integrity import CHECKSUMS_FILE, verify_checksums
    from nestrank.models.presets import local_path

    try:
        path = local_path(name_or_path)
    except ConfigError:
        return None
    if not path.is_dir() or not ((path / SETTINGS_FILE).is_file() or (path / CHECKSUMS_FILE).exists()):
        return None
    built_from = verify_checksums(path, verify, what=what, fix=RESAVE) or {}
    if base is None and (path / "adapter_config.json").is_file():
        base = _adapter_config(path).get("base_model_name_or_path")
    recorded = built_from.get("base_fingerprint")
    if verify != "none" and recorded and base is not None and built_from.get("base_model") == base:
        now = local_fingerprint(base)
        if now is not None and now != recorded:
            raise ArtifactError(path / CHECKSUMS_FILE, None, f"the base model {base} is not the one this {what} was "
                                "trained on (its weight files changed since the checkpoint was saved)",
                                "load it with the base model it was trained on (or pass verify='none' to load it "
                                "anyway)")
    return built_from


def local_fingerprint(name_or_path: str | Path | None) -> str | None:
    """:func:`~nestrank.integrity.model_fingerprint` of a model on this machine (a preset, file or directory), else ``None``."""
    from nestrank.integrity import model_fingerprint
    from nestrank.models.presets import local_path

    if name_or_path is None:
        return None
    try:
        return model_fingerprint(local_path(name_or_path))
    except ConfigError:
        return None


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
