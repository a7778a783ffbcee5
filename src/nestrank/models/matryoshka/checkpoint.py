"""The Matryoshka checkpoint directory: what :meth:`MatryoshkaReranker.save_pretrained` writes and loads.

Layout::

    nestrank.json               kind "matryoshka", base_model, the reranker settings
                                (SAVED_SETTINGS), with a compensation its V-/H-LoRA settings, and
                                trained_exits (the exit layers whose heads training reached; optional)
    heads.safetensors           heads.<layer>.weight / .bias for every layer
    compensation.safetensors    the V-/H-LoRA tensors (only with a compensation)
    profiles.json               named configurations (optional, see profiles.py)
    lora/                       the distillation LoRA, PEFT layout (added by the trainer)
    checksums.json              size and SHA-256 of every file, and the base model's fingerprint
                                (nestrank.integrity; a checkpoint without it loads with a warning)

The backbone is not copied: ``base_model`` names it (a preset, hub id or path). Loading checks
the files against ``checksums.json`` and, when the base model is on this machine, that its
weights are those the checkpoint was trained on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from nestrank.errors import ConfigError
from nestrank.integrity import reading, write_checksums
from nestrank.models.matryoshka.profiles import Profile, read_profiles
from nestrank.models.settings import RESAVE, SETTINGS_FILE, local_fingerprint, read_settings, verify_checkpoint

if TYPE_CHECKING:
    import torch

    from nestrank.models.matryoshka.compensation import FactorizedCompensation

HEADS_FILE = "heads.safetensors"
COMPENSATION_FILE = "compensation.safetensors"
#: Subdirectory of a trained checkpoint holding the distillation LoRA (PEFT layout).
LORA_DIR = "lora"
#: Constructor arguments a checkpoint records, so it reranks exactly as it was trained.
SAVED_SETTINGS = ("template", "prompt", "yes_token", "max_passage_tokens", "max_query_tokens")


class Saved(Protocol):
    """What a checkpoint stores and restores of a reranker (:class:`MatryoshkaReranker` has it all)."""

    decoder: Any
    heads: torch.nn.ModuleDict
    compensation: FactorizedCompensation | None
    base_model: str | None
    profiles: dict[str, Profile]
    num_layers: int
    trained_exits: tuple[int, ...] | None

    def set_compensation(self, compensation: FactorizedCompensation | None) -> None: ...


R = TypeVar("R", bound=Saved)


def checkpoint_settings(path: str | Path) -> dict[str, Any] | None:
    """The settings of a Matryoshka checkpoint directory, or ``None`` for anything else (a backbone)."""
    settings = read_settings(path, "matryoshka", model="Matryoshka")
    if settings is None:
        return None
    file = Path(path) / SETTINGS_FILE
    unknown = set(settings.get("reranker", {})) - set(SAVED_SETTINGS)
    if not isinstance(settings.get("compensation", {}), dict):
        raise ConfigError(f"{file}: 'compensation' must be an object of V-/H-LoRA settings")
    if "base_model" not in settings or unknown:
        raise ConfigError(f"{file}: malformed Matryoshka checkpoint settings (needs base_model; unknown "
                          f"settings: {', '.join(sorted(unknown)) or 'none'})")
    return settings


def layer_count(name_or_path: str | Path) -> int | None:
    """The layer count of a model, read from a local ``config.json`` (of the base, for a checkpoint) without
    loading weights; ``None`` when no such file says it (presets, GGUF files, hub ids)."""
    from nestrank.models.presets import local_path

    path = local_path(name_or_path)
    settings = checkpoint_settings(path) if path.is_dir() else None
    if settings is not None:
        return layer_count(settings["base_model"])
    config_file = path / "config.json"
    if not config_file.is_file():
        return None
    layers = json.loads(config_file.read_text(encoding="utf-8")).get("num_hidden_layers")
    return layers if isinstance(layers, int) and layers > 0 else None


def load(cls: Callable[..., R], name_or_path: str | Path, *, dtype: str | torch.dtype,
         device: str | torch.device | None, importance: str, merge_lora: bool, verify: str = "fast",
         **kwargs: Any) -> R:
    """``cls(model, tokenizer, ...)`` for a backbone or a checkpoint (:meth:`MatryoshkaReranker.from_pretrained`).

    A checkpoint is verified first (``verify``, see :mod:`nestrank.integrity`): its files
    against ``checksums.json``, and the base model's weights against the fingerprint recorded
    when it was saved.
    """
    from nestrank.models.backbone import load_backbone
    from nestrank.models.presets import local_path

    path = local_path(name_or_path)
    settings = checkpoint_settings(path)
    base = str(name_or_path) if settings is None else settings["base_model"]
    if settings is not None:
        kwargs = {**settings["reranker"], **kwargs}
        verify_checkpoint(path, verify, what="Matryoshka checkpoint", base=base)
    model, tokenizer = load_backbone(base, task="causal-lm", dtype=dtype, device=device,
                                     attn_implementation="eager" if importance == "eager" else "sdpa")
    if settings is not None and merge_lora and (path / LORA_DIR).is_dir():
        from peft import PeftModel

        with reading(path / LORA_DIR, "distillation LoRA", RESAVE):
            model = PeftModel.from_pretrained(model, path / LORA_DIR).merge_and_unload()
    reranker = cls(model, tokenizer, importance=importance, **kwargs)
    reranker.base_model = base
    if settings is not None:
        reranker.profiles = read_profiles(path, reranker.num_layers)
        trained = settings.get("trained_exits")
        if trained is not None:
            if not (isinstance(trained, list) and all(isinstance(n, int) and 1 <= n <= reranker.num_layers
                                                      for n in trained)):
                raise ConfigError(f"{path / SETTINGS_FILE}: trained_exits must list layers 1..{reranker.num_layers}, "
                                  f"got {trained!r}")
            reranker.trained_exits = tuple(sorted(set(trained)))
        _load_heads(reranker, path / HEADS_FILE)
        if "compensation" in settings:
            _load_compensation(reranker, path / COMPENSATION_FILE, settings["compensation"])
    return reranker


def save(reranker: Saved, path: str | Path, base_model: str | None) -> Path:
    """Write ``reranker``'s checkpoint directory atomically (see :meth:`MatryoshkaReranker.save_pretrained`)."""
    from safetensors.torch import save_file

    from nestrank.files import atomic_dir

    base = base_model or reranker.base_model
    if base is None:
        raise ConfigError("this reranker was not loaded with from_pretrained: pass base_model= (a preset, "
                          "hub id or path of its backbone) to save_pretrained")
    if Path(base).exists():
        base = str(Path(base).resolve())
    settings = {"kind": "matryoshka", "format_version": 1, "base_model": base,
                "reranker": {name: getattr(reranker, name) for name in SAVED_SETTINGS}}
    compensation = reranker.compensation
    if compensation is not None:
        settings["compensation"] = compensation.settings.to_dict()
    if reranker.trained_exits is not None:
        settings["trained_exits"] = sorted(reranker.trained_exits)
    with atomic_dir(path, SETTINGS_FILE, "a nestrank checkpoint") as staging:
        save_file(_tensors(reranker.heads, "heads."), staging / HEADS_FILE)
        if compensation is not None:
            save_file(_tensors(compensation), staging / COMPENSATION_FILE)
        (staging / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        write_checksums(staging, {"base_model": base, "base_fingerprint": local_fingerprint(base)})
    return Path(path)


def _tensors(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + name: t.detach().cpu().contiguous() for name, t in module.state_dict().items()}


def _load_heads(reranker: Saved, path: Path) -> None:
    from safetensors.torch import load_file

    _require(path)
    with reading(path, "score heads", RESAVE):
        tensors = load_file(path)
    expected = {f"heads.{name}" for name in reranker.heads.state_dict()}
    if set(tensors) != expected:
        extra, missing = sorted(set(tensors) - expected), sorted(expected - set(tensors))
        raise ConfigError(f"{path}: heads do not match the {reranker.num_layers}-layer backbone (unexpected: "
                          f"{', '.join(extra) or 'none'}; missing: {', '.join(missing) or 'none'}) (fix: load "
                          "it on the base model it was trained on)")
    reranker.heads.load_state_dict({k.removeprefix("heads."): v for k, v in tensors.items()})


def _load_compensation(reranker: Saved, path: Path, settings: dict) -> None:
    from safetensors.torch import load_file

    from nestrank.models.matryoshka.compensation import CompensationSettings, FactorizedCompensation

    _require(path)
    compensation = FactorizedCompensation(reranker.decoder.layers, CompensationSettings.from_dict(settings))
    with reading(path, "compensation", RESAVE):
        tensors = load_file(path, device=str(reranker.decoder.embed_tokens.weight.device))
    expected = set(compensation.state_dict())
    if set(tensors) != expected:
        raise ConfigError(f"{path}: the V-/H-LoRA tensors do not match the settings in {SETTINGS_FILE} "
                          f"({len(set(tensors) - expected)} unexpected, {len(expected - set(tensors))} missing)")
    compensation.load_state_dict(tensors)
    reranker.set_compensation(compensation)


def _require(path: Path) -> None:
    if not path.is_file():
        raise ConfigError(f"{path} is missing (fix: the checkpoint is incomplete; save it again)")
