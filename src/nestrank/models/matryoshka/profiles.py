"""Named run-time configurations of a Matryoshka reranker (*profiles*), stored as ``profiles.json``.

A profile gives a cost/quality point a name (``full``, ``balanced``, ``light``...) so callers ask
for ``config="light"`` instead of ``"depth=15,compress=8:0.5"``. ``nestrank tune`` chooses them
on validation queries and writes them into the model directory; every reranker has at least:

- ``full``: the full model (every layer, full width) unless the file chooses otherwise;
- ``light``: the paper's light point unless the file chooses otherwise: exit at half the depth,
  half the passage tokens merged away after a quarter of the layers
  (``depth=15,compress=8:0.5`` for 30 layers).

A profile name wins over the configuration keyword of the same spelling (``full``). File layout::

    {"format_version": 1,
     "profiles": {"light": {"config": "depth=15,compress=8:0.5", "rerank_depth": 20, "weight": 0.6,
                            "flops_ratio": 0.38, "ms_per_pair": 41.2, "quality": {"nDCG@10": 0.741}},
                  ...},
     "tuning": {...}}                       # how they were chosen (free-form, written by the tuner)

Only ``config`` is required per profile; ``rerank_depth`` (candidates to rerank) and ``weight``
(the reranker's share when interpolating with the first-stage score) are what a pipeline
applies when the profile does not say otherwise; the measured fields are informative.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nestrank.errors import ConfigError
from nestrank.models.matryoshka.config import MatryoshkaConfig, parse_config

__all__ = ["PROFILES_FILE", "Profile", "check_config", "default_profiles", "is_profile_name", "read_profiles",
           "resolve_config", "write_profiles"]

PROFILES_FILE = "profiles.json"
FORMAT_VERSION = 1
#: Profiles every reranker has (see :func:`default_profiles`).
DEFAULT_NAMES = ("full", "light")
#: Fields of a profile in ``profiles.json``.
FIELDS = ("config", "rerank_depth", "weight", "flops_ratio", "ms_per_pair", "quality")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class Profile:
    """One named configuration, with what a pipeline applies along with it and how it measured.

    Attributes:
        name: the profile's name (letters, digits, ``_`` and ``-``, starting with a letter).
        config: a configuration string (:func:`nestrank.models.matryoshka.config.parse_config`).
        rerank_depth: candidates per query to rerank with it (``None``: the caller's choice).
        weight: the reranker's weight when interpolating with the first stage (``None``: none).
        flops_ratio / ms_per_pair / quality: measured by the tuner (informative only).
    """

    name: str
    config: str
    rerank_depth: int | None = None
    weight: float | None = None
    flops_ratio: float | None = None
    ms_per_pair: float | None = None
    quality: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not is_profile_name(self.name):
            raise ConfigError(f"profile name {self.name!r} must start with a letter and hold only letters, digits, "
                              "'_' and '-'")
        parse_config(self.config)  # raises ConfigError naming the string
        if self.rerank_depth is not None and (isinstance(self.rerank_depth, bool)
                                              or not isinstance(self.rerank_depth, int) or self.rerank_depth < 1):
            raise ConfigError(f"profile {self.name!r}: rerank_depth must be a positive integer, got "
                              f"{self.rerank_depth!r}")
        if self.weight is not None and not (isinstance(self.weight, (int, float)) and 0.0 <= self.weight <= 1.0):
            raise ConfigError(f"profile {self.name!r}: weight must lie in [0, 1], got {self.weight!r}")

    @property
    def parsed(self) -> MatryoshkaConfig:
        """The profile's configuration, parsed."""
        return parse_config(self.config)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in ``profiles.json`` (without the name, which is the key)."""
        record = {k: v for k, v in asdict(self).items() if k != "name" and v not in (None, {})}
        record["config"] = self.config
        return record


def is_profile_name(spec: object) -> bool:
    """Whether ``spec`` is spelled like a profile name (not a configuration string such as ``depth=8``)."""
    return isinstance(spec, str) and bool(_NAME.match(spec.strip()))


def default_profiles(num_layers: int) -> dict[str, Profile]:
    """``full`` (the whole model) and ``light`` (half the depth, 2x compression at a quarter) for ``num_layers``."""
    if num_layers < 2:
        return {"full": Profile("full", ""), "light": Profile("light", "")}
    depth = math.floor(num_layers / 2 + 0.5)
    at = max(1, math.floor(num_layers / 4 + 0.5))
    light = f"depth={depth},compress={at}:0.5" if at < depth else f"depth={depth}"  # 2 layers: nothing to compress
    return {"full": Profile("full", ""), "light": Profile("light", light)}


def read_profiles(model_dir: str | Path | None, num_layers: int) -> dict[str, Profile]:
    """The profiles of a model: :func:`default_profiles`, updated by ``model_dir/profiles.json`` when it exists.

    Raises:
        ConfigError: the file is not valid JSON or a profile is malformed or does not fit the
            ``num_layers``-layer model (the message names the file and the profile).
    """
    profiles = default_profiles(num_layers)
    for name, profile in _file_profiles(model_dir).items():
        try:
            profile.parsed.validate(num_layers)
        except ConfigError as exc:
            raise ConfigError(f"{Path(str(model_dir), PROFILES_FILE)}: {exc}") from None
        profiles[name] = profile
    return profiles


def resolve_config(spec: MatryoshkaConfig | str | None, profiles: Mapping[str, Profile]) -> MatryoshkaConfig:
    """``spec`` parsed, where a name of ``profiles`` gives that profile's configuration.

    Raises:
        ConfigError: a name that is neither a profile nor a valid configuration string
            (the message lists the profiles).
    """
    if isinstance(spec, str) and spec.strip() in profiles:
        return profiles[spec.strip()].parsed
    return _parse(spec, profiles)


def check_config(spec: MatryoshkaConfig | str | None, model_dir: str | Path | None = None,
                 num_layers: int | None = None) -> None:
    """Check a configuration string or profile name for a model without loading the model.

    The profiles are ``full``, ``light`` and those of ``model_dir/profiles.json`` (when
    ``model_dir`` is a directory holding one). With ``num_layers`` the layers are checked too.

    Raises:
        ConfigError: what :func:`resolve_config` (and, with ``num_layers``, validation) raises.
    """
    if num_layers is not None:
        resolve_config(spec, read_profiles(model_dir, num_layers)).validate(num_layers)
        return
    names = {*DEFAULT_NAMES, *_file_profiles(model_dir)}
    if not (isinstance(spec, str) and spec.strip() in names):
        _parse(spec, names)


def _parse(spec: MatryoshkaConfig | str | None, names: Iterable[str]) -> MatryoshkaConfig:
    """:func:`parse_config` of ``spec``; a spec spelled like a name that does not parse is an unknown profile."""
    try:
        return parse_config(spec)
    except ConfigError as exc:
        if is_profile_name(spec):
            raise ConfigError(f"unknown profile {spec!r} (this model has {', '.join(sorted(names))}; "
                              "or give a configuration such as 'depth=15,compress=8:0.5')") from None
        raise exc


def _file_profiles(model_dir: str | Path | None) -> dict[str, Profile]:
    """The profiles of ``model_dir/profiles.json`` (none when it has none), checked without a model."""
    path = None if model_dir is None else Path(model_dir) / PROFILES_FILE
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}) (fix: run `nestrank tune` again or delete the file)") from None
    entries = data.get("profiles") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise ConfigError(f"{path}: expected an object with a 'profiles' object (fix: run `nestrank tune` again)")
    profiles = {}
    for name, entry in entries.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("config"), str):
            raise ConfigError(f"{path}: profile {name!r} needs a 'config' string")
        unknown = set(entry) - set(FIELDS)
        if unknown:
            raise ConfigError(f"{path}: profile {name!r} has unknown field(s) {', '.join(sorted(unknown))} "
                              f"(known: {', '.join(sorted(FIELDS))})")
        try:
            profiles[name] = Profile(name=name, **entry)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        except TypeError as exc:
            raise ConfigError(f"{path}: profile {name!r}: {exc}") from None
    return profiles


def write_profiles(model_dir: str | Path, profiles: Mapping[str, Profile], tuning: Mapping[str, Any] | None = None
                   ) -> Path:
    """Write ``model_dir/profiles.json`` atomically; ``tuning`` records how the profiles were chosen."""
    from nestrank.files import atomic_write

    path = Path(model_dir) / PROFILES_FILE
    data: dict[str, Any] = {"format_version": FORMAT_VERSION,
                            "profiles": {name: p.to_dict() for name, p in profiles.items()}}
    if tuning:
        data["tuning"] = dict(tuning)
    with atomic_write(path) as handle:
        handle.write(json.dumps(data, indent=2) + "\n")
    return path
