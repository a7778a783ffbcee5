"""Run-time depth/width configurations of the Matryoshka reranker.

A :class:`MatryoshkaConfig` says which layers to read scores from (*depth*) and how far to
shrink the passage after chosen layers (*width*). It is an immutable value, cheap to build,
and can change on every call of the reranker.

String syntax (items separated by ``,``; whitespace ignored; ``""`` or ``full`` = full model)::

    depth=16                  read the score after layer 16 (layers 17.. never run)
    exits=8;16;30             read scores after layers 8, 16 and 30 in one pass
    compress=8:0.5            after layer 8, merge passage tokens down to 50% of the
                              passage's input length (layers 9.. see the shorter passage)
    compress=8:0.5;16:0.25    two compression steps (``compress=`` may also be repeated)
    lengths=1:224;9:112       the paper's per-layer form: layer i processes L_i passage
                              tokens; a layer not listed keeps the previous length. The
                              entry for layer 1 caps (truncates) the passage; every drop
                              L_i < L_(i-1) is a merge after layer i-1 down to L_i tokens

Layers are 1-based (layer 1 is the first decoder layer, the exit ``N`` is the full model).
Ratios are fractions of the passage's length *at the input* (after truncation), so
``compress=8:0.5;16:0.25`` halves the passage after layer 8 and halves it again after 16.
Ratio and absolute-length compressions cannot be mixed in one configuration.

The *compression factor* k of a step (the size of the groups of consecutive tokens merged
into one) is ``ceil(current_length / target_length)``: 2 for ``0.5``, 2 again for the step
``0.5 -> 0.25``, 4 for ``1 -> 0.25``. :meth:`MatryoshkaConfig.factors` gives it per layer for a
passage length, :meth:`MatryoshkaConfig.nominal_factors` the length-independent value of
ratio steps (what a per-factor adapter is keyed by).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from nestrank.errors import ConfigError

__all__ = ["Compression", "MatryoshkaConfig", "parse_config"]


@dataclass(frozen=True, slots=True)
class Compression:
    """One width step: after layer ``layer``, shrink the passage to ``ratio`` of its input
    length, or to ``length`` tokens (exactly one of the two is set)."""

    layer: int
    ratio: float | None = None
    length: int | None = None

    def target(self, passage_len: int) -> int:
        """Requested passage length for a passage of ``passage_len`` input tokens.

        ``round(ratio * passage_len)`` (halves round up), at least 1; or ``length``. Never
        more than ``passage_len`` (a passage shorter than the target is not merged).
        """
        if passage_len == 0:
            return 0
        wanted = math.floor(self.ratio * passage_len + 0.5) if self.ratio is not None else self.length
        return max(1, min(passage_len, wanted))

    def __str__(self) -> str:
        return f"{self.layer}:{self.ratio:g}" if self.ratio is not None else f"{self.layer}:{self.length}"


@dataclass(frozen=True, slots=True)
class MatryoshkaConfig:
    """Depth and width of one Matryoshka forward pass.

    Attributes:
        exits: layers (1-based, increasing) after which a score is read; empty = the last
            layer of the model. Layers after the deepest exit are never computed.
        compress: width steps, by increasing layer, each before the deepest exit.
        passage_tokens: optional cap on the passage length (the ``lengths=1:L`` entry); the
            reranker's own maximum still applies.

    Build one with :func:`parse_config`, :meth:`from_lengths` or the constructor; it checks
    everything that does not need the model, :meth:`validate` checks the layer count.
    """

    exits: tuple[int, ...] = ()
    compress: tuple[Compression, ...] = ()
    passage_tokens: int | None = None
    _spec: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        where = f" in {self._spec!r}" if self._spec else ""
        for layer in self.exits:
            _check_int(layer, "exit layer", where)
        if list(self.exits) != sorted(set(self.exits)):
            raise ConfigError(f"exit layers must be distinct and increasing, got {list(self.exits)}{where}")
        if self.passage_tokens is not None:
            _check_int(self.passage_tokens, "passage length", where)
        layers = [c.layer for c in self.compress]
        for step in self.compress:
            _check_int(step.layer, "compression layer", where)
            if (step.ratio is None) == (step.length is None):
                raise ConfigError(f"compression after layer {step.layer} needs exactly one of ratio or length{where}")
            if step.ratio is not None and not 0.0 < step.ratio <= 1.0:
                raise ConfigError(f"compression ratio {step.ratio:g} after layer {step.layer} is outside (0, 1]{where} "
                                  "(fix: give the kept fraction, e.g. 0.5 to halve the passage)")
            if step.length is not None:
                _check_int(step.length, "compressed length", where)
        if layers != sorted(set(layers)):
            raise ConfigError(f"compression layers must be distinct and increasing, got {layers}{where}")
        kinds = {step.ratio is None for step in self.compress}
        if len(kinds) > 1:
            raise ConfigError(f"cannot mix ratio (compress=) and absolute length (lengths=) steps{where}")
        sizes = [step.ratio if step.ratio is not None else step.length for step in self.compress]
        if self.passage_tokens is not None and self.compress and self.compress[0].length is not None:
            sizes = [self.passage_tokens, *sizes]
        for before, after in zip(sizes, sizes[1:], strict=False):
            if after > before:
                raise ConfigError(f"passage lengths must be non-increasing layer by layer, got {before:g} then "
                                  f"{after:g}{where} (fix: each step keeps at most what the previous one kept)")
        if self.exits and self.compress and self.compress[-1].layer >= self.exits[-1]:
            raise ConfigError(f"compression after layer {self.compress[-1].layer} is at or after the exit layer "
                              f"{self.exits[-1]}{where}: it could not change any score (fix: compress before the exit)")

    @classmethod
    def from_lengths(cls, lengths: Mapping[int, int], *, depth: int | None = None) -> MatryoshkaConfig:
        """The paper's per-layer form: ``{layer_i: L_i}``, passage tokens processed by layer i.

        Layers not listed keep the previous length. ``L_1`` (when given) caps the passage;
        each drop ``L_i < L_(i-1)`` becomes a merge after layer ``i - 1``. ``depth`` is the
        exit layer n (default: the model's last layer); every listed layer must be <= n.
        """
        items = sorted(lengths.items())
        for layer, _ in items:
            _check_int(layer, "layer", "")
            if depth is not None and layer > depth:
                raise ConfigError(f"length given for layer {layer}, after the exit layer {depth} (fix: drop it or "
                                  "raise depth)")
        cap = None
        steps = []
        previous = None
        for layer, length in items:
            _check_int(length, f"length of layer {layer}", "")
            if previous is not None and length > previous:
                raise ConfigError(f"per-layer lengths must be non-increasing, got {previous} then {length} at "
                                  f"layer {layer}")
            if layer == 1:
                cap = length
            elif previous is None or length < previous:
                steps.append(Compression(layer - 1, length=length))
            previous = length
        return cls(exits=() if depth is None else (depth,), compress=tuple(steps), passage_tokens=cap)

    @property
    def depth(self) -> int | None:
        """The deepest exit layer, or ``None`` for the model's last layer."""
        return self.exits[-1] if self.exits else None

    @property
    def is_full(self) -> bool:
        """True when this is the plain model: last layer only, no compression, no cap."""
        return not self.exits and not self.compress and self.passage_tokens is None

    def validate(self, num_layers: int) -> tuple[int, ...]:
        """Check the layers against a model of ``num_layers`` layers; returns the exit layers."""
        exits = self.exits or (num_layers,)
        if exits[-1] > num_layers:
            raise ConfigError(f"exit layer {exits[-1]} is out of range: the model has {num_layers} layers "
                              f"(fix: use a depth between 1 and {num_layers})")
        if self.compress and self.compress[-1].layer >= exits[-1]:
            raise ConfigError(f"compression after layer {self.compress[-1].layer} is at or after the exit layer "
                              f"{exits[-1]} (fix: compress before the exit)")
        return exits

    def passage_lengths(self, passage_len: int) -> dict[int, int]:
        """Passage length right after each compression layer, for an input passage of ``passage_len``."""
        lengths, current = {}, passage_len
        for step in self.compress:
            current = min(current, step.target(passage_len))
            lengths[step.layer] = current
        return lengths

    def factors(self, passage_len: int) -> dict[int, int]:
        """Compression factor k at each compression layer: ``ceil(current / target)`` (1 = no merge)."""
        factors, current = {}, passage_len
        for layer, target in self.passage_lengths(passage_len).items():
            factors[layer] = 1 if target >= current else math.ceil(current / target)
            current = target
        return factors

    def nominal_factors(self) -> dict[int, int]:
        """Length-independent k of ratio steps: ``ceil(previous_ratio / ratio)`` (needs ratio steps)."""
        if any(step.ratio is None for step in self.compress):
            raise ConfigError("nominal factors need ratio steps (compress=); absolute lengths depend on the passage")
        factors, previous = {}, 1.0
        for step in self.compress:
            factors[step.layer] = max(1, math.ceil(previous / step.ratio - 1e-9))
            previous = step.ratio
        return factors

    def __str__(self) -> str:
        parts = []
        if len(self.exits) == 1:
            parts.append(f"depth={self.exits[0]}")
        elif self.exits:
            parts.append("exits=" + ";".join(map(str, self.exits)))
        if self.compress and self.compress[0].length is not None:
            entries = [] if self.passage_tokens is None else [f"1:{self.passage_tokens}"]
            entries += [f"{c.layer + 1}:{c.length}" for c in self.compress]
            parts.append("lengths=" + ";".join(entries))
        else:
            if self.passage_tokens is not None:
                parts.append(f"lengths=1:{self.passage_tokens}")
            if self.compress:
                parts.append("compress=" + ";".join(map(str, self.compress)))
        return ",".join(parts) or "full"


def parse_config(spec: str | MatryoshkaConfig | None) -> MatryoshkaConfig:
    """A :class:`MatryoshkaConfig` from a string (see the module docs), a config, or ``None`` (full model)."""
    if spec is None:
        return MatryoshkaConfig()
    if isinstance(spec, MatryoshkaConfig):
        return spec
    if not isinstance(spec, str):
        raise ConfigError(f"a Matryoshka config is a string or MatryoshkaConfig, got {type(spec).__name__}")
    text = "".join(spec.split())
    if text in ("", "full"):
        return MatryoshkaConfig()
    exits: list[int] = []
    compress: list[Compression] = []
    lengths: dict[int, int] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not value:
            raise ConfigError(f"bad item {item!r} in Matryoshka config {spec!r} (fix: write key=value, e.g. "
                              "depth=16 or compress=8:0.5)")
        if key == "depth":
            exits.append(_parse_int(value, "depth", spec))
        elif key == "exits":
            exits.extend(_parse_int(v, "exit layer", spec) for v in value.split(";"))
        elif key in ("compress", "lengths"):
            for entry in value.split(";"):
                layer_text, colon, size_text = entry.partition(":")
                if not colon:
                    raise ConfigError(f"bad {key} entry {entry!r} in {spec!r} (fix: write LAYER:"
                                      f"{'RATIO, e.g. 8:0.5' if key == 'compress' else 'TOKENS, e.g. 9:112'})")
                layer = _parse_int(layer_text, "layer", spec)
                if key == "compress":
                    compress.append(Compression(layer, ratio=_parse_float(size_text, spec)))
                elif layer in lengths:
                    raise ConfigError(f"layer {layer} given twice in lengths= of {spec!r}")
                else:
                    lengths[layer] = _parse_int(size_text, "length", spec)
        else:
            raise ConfigError(f"unknown key {key!r} in Matryoshka config {spec!r} (fix: use depth=, exits=, "
                              "compress= or lengths=)")
    if lengths and compress:
        raise ConfigError(f"cannot mix compress= and lengths= in {spec!r} (fix: use one form)")
    exits = sorted(exits)
    if len(set(exits)) != len(exits):
        raise ConfigError(f"an exit layer is given twice in {spec!r}")
    if lengths:
        if exits and max(lengths) > exits[-1]:
            raise ConfigError(f"lengths= names layer {max(lengths)}, after the exit layer {exits[-1]} in {spec!r}")
        base = MatryoshkaConfig.from_lengths(lengths)
        return MatryoshkaConfig(tuple(exits), base.compress, base.passage_tokens, _spec=spec)
    return MatryoshkaConfig(tuple(exits), tuple(compress), _spec=spec)


def _check_int(value: object, what: str, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}{where}")


def _parse_int(text: str, what: str, spec: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{what} {text!r} in {spec!r} is not an integer") from None
    _check_int(value, what, f" in {spec!r}")
    return value


def _parse_float(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"compression ratio {text!r} in {spec!r} is not a number (fix: e.g. 0.5)") from None
    if not math.isfinite(value):
        raise ConfigError(f"compression ratio {text!r} in {spec!r} is not finite")
    return value
