"""Per-request cost: which Matryoshka configuration a request runs, and a running latency model.

A request chooses its cost, first match wins:

1. the body's ``cost`` object: ``{"profile": "light"}``, ``{"config": "depth=15,compress=8:0.5"}``,
   ``{"depth": 15, "width": 0.5}`` or ``{"budget_ms": 150, "strict": false}``;
2. a model alias ``name:profile`` (for clients that only let you set ``model``);
3. the ``X-Nestrank-Profile`` header (for clients that drop unknown body fields);
4. the server's default profile.

``depth``/``width``: exit after layer ``depth`` (default: the last), keeping a ``width``
fraction of the passage tokens after a quarter of the layers (the paper's light point is
``depth=15, width=0.5`` on 30 layers). ``budget_ms`` picks the heaviest profile (most FLOPs)
whose predicted latency fits; when none does, the lightest with a warning, or a 422 when
``strict``. Predictions come from :class:`LatencyModel`: seconds per padded token of each
configuration, a running average over the batches the worker actually ran (every profile is
run once at warm-up), plus the queue's expected wait.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Protocol

from nestrank.errors import ConfigError
from nestrank.serve.engines import RerankEngine
from nestrank.serve.scheduler import BatchStats

HEADER = "X-Nestrank-Profile"


class CostRequest(Protocol):
    """The body's ``cost`` object (see :class:`nestrank.serve.schemas.Cost`)."""

    profile: str | None
    config: str | None
    depth: int | None
    width: float | None
    budget_ms: float | None
    strict: bool


@dataclass(frozen=True)
class CostChoice:
    """What a request runs: the scheduler key, its profile (if it is one) and how it was chosen."""

    key: Any
    profile: str | None
    config: str
    source: str
    warnings: tuple[str, ...] = ()
    predicted_ms: float | None = None


class LatencyModel:
    """Seconds per padded token of each (model, configuration), averaged over the batches that ran.

    An exponential moving average (weight ``alpha`` on the newest batch), updated by the
    scheduler's ``on_batch`` observer on the worker thread.
    """

    def __init__(self, alpha: float = 0.2) -> None:
        self.alpha = alpha
        self._rates: dict[tuple[str, Hashable], float] = {}
        self._lock = threading.Lock()

    def observe(self, model: str, stats: BatchStats) -> None:
        """Fold one batch's time into the average of its configuration."""
        rate = stats.seconds / max(stats.padded_tokens, 1)
        with self._lock:
            old = self._rates.get((model, stats.key))
            self._rates[(model, stats.key)] = rate if old is None else (1 - self.alpha) * old + self.alpha * rate

    def seconds_per_token(self, model: str, key: Hashable) -> float | None:
        """The running average for ``key``, or ``None`` before any batch of it ran."""
        return self._rates.get((model, key))

    def known(self, model: str) -> dict[Hashable, float]:
        """Every configuration of ``model`` with an average."""
        with self._lock:
            return {key: rate for (name, key), rate in self._rates.items() if name == model}


def depth_width_config(depth: int | None, width: float | None, num_layers: int) -> str:
    """The configuration string of the ``depth``/``width`` cost fields (see the module docstring)."""
    depth = num_layers if depth is None else depth
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= num_layers:
        raise ConfigError(f"cost.depth must be an exit layer in 1..{num_layers}, got {depth!r}")
    spec = f"depth={depth}"
    if width is not None and width < 1.0:
        if width <= 0.0:
            raise ConfigError(f"cost.width must lie in (0, 1], got {width!r}")
        if depth < 2:
            raise ConfigError("cost.width below 1 needs depth >= 2 (the passage is merged after a layer before the "
                              "exit)")
        at = min(max(1, math.floor(num_layers / 4 + 0.5)), depth - 1)
        spec += f",compress={at}:{width:g}"
    return spec


def choose(engine: RerankEngine, cost: CostRequest | None, alias_profile: str | None, header_profile: str | None,
           default_profile: str) -> CostChoice | None:
    """The :class:`CostChoice` of a request that names its configuration; ``None`` when it gives a budget.

    Raises:
        ConfigError: unknown profile, bad configuration, or a cost object that mixes ways of
            choosing (profile, config, depth/width, budget_ms): a 422.
    """
    spec, source = None, "body"
    if cost is not None:
        modes = [name for name, given in (("profile", cost.profile is not None), ("config", cost.config is not None),
                                          ("depth/width", cost.depth is not None or cost.width is not None),
                                          ("budget_ms", cost.budget_ms is not None)) if given]
        if len(modes) > 1:
            raise ConfigError(f"cost: give one of profile, config, depth/width or budget_ms, not {' and '.join(modes)}")
        if cost.strict and cost.budget_ms is None:
            raise ConfigError("cost.strict applies to budget_ms only")
        if modes == ["budget_ms"]:
            return None
        if modes == ["depth/width"]:
            if not engine.matryoshka:
                raise ConfigError(f"model {engine.name!r} is a pointwise reranker: cost.depth/width need a Matryoshka "
                                  "reranker")
            spec = depth_width_config(cost.depth, cost.width, engine.reranker.num_layers)
        elif modes:
            spec = cost.profile if cost.profile is not None else cost.config
    if spec is None:
        for given, where in ((alias_profile, "alias"), (header_profile, "header"), (default_profile, "default")):
            if given is not None:
                spec, source = given.strip(), where
                break
    key = engine.resolve(spec)
    profile = spec if spec in engine.profiles else _profile_of(engine, key)
    return CostChoice(key, profile, _config_text(key), source)


def choose_for_budget(engine: RerankEngine, cost: CostRequest, latency: LatencyModel, tokens: int, wait_s: float,
                      lengths: tuple[int, int, int]) -> CostChoice:
    """The heaviest profile whose predicted latency fits ``cost.budget_ms`` (see the module docstring).

    Raises:
        ConfigError: ``strict`` and no profile fits.
    """
    ranked = sorted(((engine.flops_ratio(engine.resolve(name), *lengths), name) for name in engine.profiles),
                    reverse=True)
    known = latency.known(engine.name)
    predictions = []
    for ratio, name in ranked:
        key = engine.resolve(name)
        rate = known.get(key)
        if rate is None and known:  # scale a measured configuration by the FLOPs ratio
            other, other_rate = next(iter(known.items()))
            rate = other_rate * ratio / max(engine.flops_ratio(other, *lengths), 1e-9)
        predicted = None if rate is None else 1000.0 * (wait_s + tokens * rate)
        predictions.append((name, key, predicted))
        if predicted is None or predicted <= cost.budget_ms:
            return CostChoice(key, name, _config_text(key), "budget", predicted_ms=predicted)
    name, key, predicted = predictions[-1]
    message = (f"no profile fits budget_ms={cost.budget_ms:g}: the lightest, {name!r}, is predicted to take "
               f"{predicted:.0f} ms")
    if cost.strict:
        raise ConfigError(message + " (strict)")
    return CostChoice(key, name, _config_text(key), "budget", (message + "; running it anyway",), predicted)


def _profile_of(engine: RerankEngine, key: Any) -> str | None:
    """The name of the profile whose configuration equals ``key``, if any."""
    return next((name for name in engine.profiles if engine.resolve(name) == key), None)


def _config_text(key: Any) -> str:
    text = "" if key is None else str(key)
    return text or "full"
