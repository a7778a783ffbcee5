"""The Matryoshka reranker: one LLM reranker whose depth and width are chosen per call.

It drives a Hugging Face Llama-family causal LM (Llama, Mistral, Qwen2/3, SmolLM2) module
by module: ``embed_tokens``, ``rotary_emb``, then ``layers[i]`` one at a time
(:meth:`MatryoshkaReranker.run_layer` is the single place a layer runs, the hook point for
per-layer adapters), and ``norm``. No model file is forked.

Input of one pair (template and prompt are configurable)::

    [BOS] A: {query}\\nB: {passage}\\n{prompt}

The three pieces are tokenized separately (the passage keeps the space that precedes it), so
the passage's token span is known exactly; only passage tokens are ever merged. The passage
is truncated to ``max_passage_tokens`` (224 by default; use 2048 for documents) and the query
to ``max_query_tokens``.

Score at exit layer n: ``head_n(norm(h_n[last]))``, where ``h_n`` is the output of layer n,
``norm`` the model's final norm and ``head_n`` a ``Linear(hidden, 1, bias=True)`` stored in
:attr:`MatryoshkaReranker.heads` under the key ``str(n)``. Every head starts as the LM head's
row for the "Yes" token (the first token of ``tokenizer("Yes", add_special_tokens=False)``,
as FlagEmbedding's LLM rerankers do) with a zero bias (a checkpoint may set it to calibrate
exits against each other; nestrank's group-softmax training leaves it fixed, since a group
loss gives it no gradient), so untrained, exit N gives the base LM's "Yes" logit at the last
position.

Width (see :mod:`nestrank.models.token_merge`): a compression after layer l takes the
attention row of layer l's own self-attention for the last token: ``input_layernorm`` of the
layer's input, the last token's query and every key through the layer's ``q_proj``/``k_proj``
(+ q/k norms when the model has them) and RoPE, softmax over the row (GQA heads share their
key head), averaged over heads. This is exactly the attention layer l applies, computed as
one row, never an L x L matrix. Layer l then runs at full length and its *output* is merged,
so layers l+1.. run on the shorter sequence. ``importance="eager"`` instead reads the same
row out of the full attention matrices of a model loaded with eager attention, all layers'
matrices kept as ``output_attentions=True`` does (the reference approach of the FlagEmbedding
research code; used by the speed benchmark).

Batches are left-padded, so the last token is at index -1 in every row. The attention mask
is rebuilt from the row lengths after every merge: a 4-D additive mask, causal over the
real tokens of each row, padding hidden (padding rows attend to themselves only, so no row
is fully masked); with SDPA and no padding no mask is passed (the causal kernel is used).
Position ids are per token: the original ones for unmerged tokens, a group's first position
for merged ones, so query and prompt keep their positions and relative distances.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from nestrank.data.corpus import Document
from nestrank.errors import ConfigError
from nestrank.models.batching import map_batches
from nestrank.models.matryoshka_config import MatryoshkaConfig, parse_config
from nestrank.models.profiles import Profile, default_profiles, is_profile_name, read_profiles
from nestrank.models.reranker import Reranker
from nestrank.models.settings import SETTINGS_FILE, read_settings
from nestrank.models.token_merge import RowLayout, merge_rows, plan_merges

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from nestrank.models.compensation import FactorizedCompensation

__all__ = ["DEFAULT_PROMPT", "DEFAULT_TEMPLATE", "MatryoshkaReranker", "ConfigLike"]

DEFAULT_TEMPLATE = "A: {query}\nB: {passage}\n"
DEFAULT_PROMPT = "Predict whether passage B contains an answer to query A."
HEADS_FILE = "heads.safetensors"
COMPENSATION_FILE = "compensation.safetensors"
#: Subdirectory of a trained checkpoint holding the distillation LoRA (PEFT layout).
LORA_DIR = "lora"
#: Constructor arguments a checkpoint records, so it reranks exactly as it was trained.
SAVED_SETTINGS = ("template", "prompt", "yes_token", "max_passage_tokens", "max_query_tokens")
ConfigLike = MatryoshkaConfig | str | None
Importance = Literal["row", "eager"]


@dataclass(frozen=True, slots=True)
class EncodedPair:
    """Token ids of one pair and where its passage is: ``ids[passage_start:passage_start + passage_len]``."""

    ids: list[int]
    passage_start: int
    passage_len: int


@dataclass
class BatchState:
    """The running state of one batch between layers (left-padded).

    ``positions`` ``(B, L)`` position ids; ``layouts`` where each row's passage is;
    ``mask`` the 4-D additive attention mask (``None``: causal kernel, no padding);
    ``rope`` the rotary ``(cos, sin)``; ``factors`` per row, the compression factor k of the
    last merge applied to the row (1 before any), for factor-specific adapters.
    """

    positions: torch.Tensor
    layouts: list[RowLayout]
    mask: torch.Tensor | None
    rope: tuple[torch.Tensor, torch.Tensor]
    factors: list[int]


class MatryoshkaReranker(Reranker):
    """Runtime-configurable LLM reranker (Liu et al. 2025) over a Llama-family causal LM.

    Args:
        model: a ``*ForCausalLM`` with ``model.model.{embed_tokens, rotary_emb, layers, norm}``
            and an LM head, loaded with ``sdpa`` or ``eager`` attention.
        tokenizer: its tokenizer.
        template: the pair text, with ``{query}`` and ``{passage}`` placeholders; the prompt
            follows it.
        prompt: the instruction appended after the template.
        yes_token: the text whose first token's LM-head row initialises the heads.
        max_passage_tokens / max_query_tokens: truncation limits, in tokens.
        importance: ``row`` (last-token attention row from q/k projections, default) or
            ``eager`` (read from the full attention matrices; needs eager attention).
    """

    default_batch_tokens = 8192

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        template: str = DEFAULT_TEMPLATE,
        prompt: str = DEFAULT_PROMPT,
        yes_token: str = "Yes",
        max_passage_tokens: int = 224,
        max_query_tokens: int = 64,
        importance: Importance = "row",
    ) -> None:
        import torch

        decoder = getattr(model, "model", None)
        needed = ("embed_tokens", "rotary_emb", "layers", "norm")
        if decoder is None or not all(hasattr(decoder, name) for name in needed) or model.get_output_embeddings() is None:
            raise ConfigError(f"{type(model).__name__} is not a Llama-family causal LM (needs model.embed_tokens, "
                              "rotary_emb, layers, norm and an LM head; fix: load it with task='causal-lm')")
        attn = model.config._attn_implementation
        if importance not in ("row", "eager"):
            raise ConfigError(f"importance must be 'row' or 'eager', got {importance!r}")
        if importance == "eager" and attn != "eager":
            raise ConfigError("importance='eager' reads full attention matrices: load the model with "
                              "attn_implementation='eager'")
        if attn not in ("sdpa", "eager"):
            raise ConfigError(f"attention implementation {attn!r} is not supported by the Matryoshka engine "
                              "(fix: load the model with attn_implementation='sdpa')")
        if template.count("{query}") != 1 or template.count("{passage}") != 1:
            raise ConfigError(f"template must contain {{query}} and {{passage}} exactly once, got {template!r}")
        if template.index("{query}") > template.index("{passage}"):
            raise ConfigError("template must put {query} before {passage}")
        for name, value in (("max_passage_tokens", max_passage_tokens), ("max_query_tokens", max_query_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        self.model = model
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.template = template
        self.prompt = prompt
        self.max_passage_tokens = max_passage_tokens
        self.max_query_tokens = max_query_tokens
        self.importance = importance
        self.yes_token = yes_token
        self.base_model: str | None = None  # what from_pretrained loaded; a checkpoint refers to it
        self.compensation: FactorizedCompensation | None = None
        self.num_layers = len(decoder.layers)
        self.profiles: dict[str, Profile] = default_profiles(self.num_layers)
        self._prefix_ids = _leading_special_ids(tokenizer)
        yes_ids = tokenizer(yes_token, add_special_tokens=False)["input_ids"]
        if not yes_ids:
            raise ConfigError(f"yes_token {yes_token!r} encodes to no tokens")
        self.yes_token_id = int(yes_ids[0])
        lm_head = model.get_output_embeddings()
        weight = lm_head.weight[self.yes_token_id].detach()
        bias = getattr(lm_head, "bias", None)
        self.heads = torch.nn.ModuleDict()
        for layer in range(1, self.num_layers + 1):
            head = torch.nn.Linear(weight.shape[0], 1, bias=True, device=weight.device, dtype=weight.dtype)
            with torch.no_grad():
                head.weight.copy_(weight[None, :])
                head.bias.fill_(0.0 if bias is None else float(bias[self.yes_token_id]))
            self.heads[str(layer)] = head
        self.heads.eval()

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path = "smollm2-135m",
        *,
        dtype: str | torch.dtype = "auto",
        device: str | torch.device | None = None,
        importance: Importance = "row",
        merge_lora: bool = True,
        **kwargs,
    ) -> MatryoshkaReranker:
        """Load a backbone with :func:`nestrank.models.load_backbone` (``task="causal-lm"``) and wrap it.

        ``name_or_path`` is a backbone or a Matryoshka checkpoint directory (see
        :meth:`save_pretrained`); a checkpoint's ``lora/`` adapter (the distillation LoRA) is
        merged into the base weights, unless ``merge_lora=False`` (the trainer then loads it
        itself, to continue training it). ``importance="eager"`` loads the model with eager
        attention; other keyword arguments go to the constructor (template, prompt,
        yes_token, max_passage_tokens...) and win over a checkpoint's recorded settings.
        """
        from nestrank.models.backbone import load_backbone

        settings = _checkpoint_settings(Path(name_or_path))
        base = str(name_or_path) if settings is None else settings["base_model"]
        if settings is not None:
            kwargs = {**settings["reranker"], **kwargs}
        model, tokenizer = load_backbone(base, task="causal-lm", dtype=dtype, device=device,
                                         attn_implementation="eager" if importance == "eager" else "sdpa")
        adapter = Path(name_or_path) / LORA_DIR
        if settings is not None and merge_lora and adapter.is_dir():
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        reranker = cls(model, tokenizer, importance=importance, **kwargs)
        reranker.base_model = base
        if settings is not None:
            reranker.profiles = read_profiles(name_or_path, reranker.num_layers)
            reranker._load_heads(Path(name_or_path) / HEADS_FILE)
            if "compensation" in settings:
                reranker._load_compensation(Path(name_or_path) / COMPENSATION_FILE, settings["compensation"])
        return reranker

    def save_pretrained(self, path: str | Path, *, base_model: str | None = None) -> Path:
        """Write a Matryoshka checkpoint directory atomically and return its path.

        Layout: ``nestrank.json`` (``kind``, ``base_model``, the reranker settings, and the
        ``compensation`` settings when one is set), ``heads.safetensors``
        (``heads.<layer>.weight``/``.bias`` for every layer) and, with a compensation,
        ``compensation.safetensors`` (its V-/H-LoRA tensors, see :mod:`nestrank.models.compensation`). The
        backbone is not copied: ``base_model`` (default: what :meth:`from_pretrained` loaded)
        names it, as a preset, hub id or path. The reranker trainer adds the distillation
        LoRA as ``lora/`` (PEFT layout). :meth:`from_pretrained` loads the directory.
        """
        import json

        from safetensors.torch import save_file

        from nestrank.files import atomic_dir

        base = base_model or self.base_model
        if base is None:
            raise ConfigError("this reranker was not loaded with from_pretrained: pass base_model= (a preset, "
                              "hub id or path of its backbone) to save_pretrained")
        if Path(base).exists():
            base = str(Path(base).resolve())
        settings = {"kind": "matryoshka", "format_version": 1, "base_model": base,
                    "reranker": {name: getattr(self, name) for name in SAVED_SETTINGS}}
        tensors = {f"heads.{name}": t.detach().cpu().contiguous() for name, t in self.heads.state_dict().items()}
        if self.compensation is not None:
            settings["compensation"] = self.compensation.settings.to_dict()
        with atomic_dir(path, SETTINGS_FILE, "a nestrank checkpoint") as staging:
            save_file(tensors, staging / HEADS_FILE)
            if self.compensation is not None:
                save_file({name: t.detach().cpu().contiguous() for name, t in self.compensation.state_dict().items()},
                          staging / COMPENSATION_FILE)
            (staging / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        return Path(path)

    def _load_heads(self, path: Path) -> None:
        from safetensors.torch import load_file

        if not path.is_file():
            raise ConfigError(f"{path} is missing (fix: the checkpoint is incomplete; save it again)")
        tensors = load_file(path)
        expected = {f"heads.{name}" for name in self.heads.state_dict()}
        if set(tensors) != expected:
            extra, missing = sorted(set(tensors) - expected), sorted(expected - set(tensors))
            raise ConfigError(f"{path}: heads do not match the {self.num_layers}-layer backbone (unexpected: "
                              f"{', '.join(extra) or 'none'}; missing: {', '.join(missing) or 'none'}) (fix: load "
                              "it on the base model it was trained on)")
        self.heads.load_state_dict({k.removeprefix("heads."): v for k, v in tensors.items()})

    def _load_compensation(self, path: Path, settings: dict) -> None:
        from safetensors.torch import load_file

        from nestrank.models.compensation import CompensationSettings, FactorizedCompensation

        if not path.is_file():
            raise ConfigError(f"{path} is missing (fix: the checkpoint is incomplete; save it again)")
        compensation = FactorizedCompensation(self.decoder.layers, CompensationSettings.from_dict(settings))
        tensors = load_file(path, device=str(self.decoder.embed_tokens.weight.device))
        expected = set(compensation.state_dict())
        if set(tensors) != expected:
            raise ConfigError(f"{path}: the V-/H-LoRA tensors do not match the settings in {SETTINGS_FILE} "
                              f"({len(set(tensors) - expected)} unexpected, {len(expected - set(tensors))} missing)")
        compensation.load_state_dict(tensors)
        self.set_compensation(compensation)

    # ----------------------------------------------------------------- public API

    def score(
        self,
        queries: str | Sequence[str],
        documents: Sequence[Document | str],
        *,
        config: ConfigLike = None,
        batch_tokens: int | None = None,
        show_progress: bool = False,
    ) -> np.ndarray:
        """One float32 score per document; with several exits in ``config``, shape ``(n_docs, n_exits)``.

        ``config`` is a :class:`MatryoshkaConfig`, a string such as ``"depth=16,compress=8:0.5"``,
        a profile name (``"light"``, see :attr:`profiles`) or ``None`` (the full model).
        """
        parsed = self.resolve_config(config)
        exits = parsed.validate(self.num_layers)
        table = self._score_table(queries, documents, parsed, exits, batch_tokens, show_progress)
        return table[:, 0] if len(exits) == 1 else table

    def score_exits(
        self,
        queries: str | Sequence[str],
        documents: Sequence[Document | str],
        exits: Sequence[int],
        *,
        config: ConfigLike = None,
        batch_tokens: int | None = None,
        show_progress: bool = False,
    ) -> dict[int, np.ndarray]:
        """Scores at several exit layers from one pass: ``{layer: scores}``.

        ``exits`` replaces the exits of ``config``; its width steps still apply (each must
        come before the deepest exit). Layers after the deepest exit are never computed.
        """
        base = self.resolve_config(config)
        parsed = MatryoshkaConfig(tuple(sorted(set(exits))), base.compress, base.passage_tokens)
        layers = parsed.validate(self.num_layers)
        table = self._score_table(queries, documents, parsed, layers, batch_tokens, show_progress)
        return {layer: table[:, i] for i, layer in enumerate(layers)}

    def encode(self, query: str, document: Document | str, config: ConfigLike = None) -> EncodedPair:
        """Token ids of one pair, with the passage span (truncation applied)."""
        parsed = self.resolve_config(config)
        text = document.full_text if isinstance(document, Document) else document
        return self._encode(query, text, self._passage_limit(parsed))

    def resolve_config(self, config: ConfigLike) -> MatryoshkaConfig:
        """``config`` parsed: a profile name of :attr:`profiles` gives that profile's configuration.

        Raises:
            ConfigError: a name that is neither a profile nor a valid configuration string
                (the message lists the profiles).
        """
        if isinstance(config, str) and config.strip() in self.profiles:
            return self.profiles[config.strip()].parsed
        try:
            return parse_config(config)
        except ConfigError as exc:
            if is_profile_name(config):
                raise ConfigError(f"unknown profile {config!r} (this model has {', '.join(sorted(self.profiles))}; "
                                  "or give a configuration such as 'depth=15,compress=8:0.5')") from None
            raise exc

    def batch_inputs(self, pairs: Sequence[EncodedPair]) -> tuple[torch.Tensor, list[RowLayout], list[int]]:
        """The :meth:`forward_batch` inputs of encoded pairs: left-padded ids on the model's device, layouts, passage lengths."""
        import torch

        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max(len(p.ids) for p in pairs)
        ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
        for row, pair in enumerate(pairs):
            ids[row, width - len(pair.ids):] = torch.tensor(pair.ids)
        layouts = [RowLayout(p.passage_start, p.passage_len, len(p.ids)) for p in pairs]
        return ids.to(self.decoder.embed_tokens.weight.device), layouts, [p.passage_len for p in pairs]

    def flops(self, config: ConfigLike, query_len: int, passage_len: int, prompt_len: int) -> float:
        """Analytic matmul FLOPs (2 per multiply-add) of scoring one pair under ``config``.

        ``query_len`` counts the query's tokens, ``passage_len`` the passage's, ``prompt_len``
        every other token (template, prompt, special tokens). Per layer run at length L
        (hidden d, h query heads and g key/value heads of size e, MLP width m):
        ``2Ld(2he + 2ge)`` projections + ``4hL^2e`` attention scores and weighted values
        (the full square, as dense kernels compute it) + ``6Ldm`` gated MLP. With
        ``importance="row"`` a compression layer adds its attention row ``2Ldge + 2dhe + 2hLe``
        (the eager path reads it from matrices it computes anyway). Each exit adds ``2d``.
        The embedding lookup, norms, softmax and the LM head (never run) are not counted.
        """
        parsed = self.resolve_config(config)
        exits = parsed.validate(self.num_layers)
        cfg = self.model.config
        d, m = cfg.hidden_size, cfg.intermediate_size
        h, g = cfg.num_attention_heads, cfg.num_key_value_heads
        e = getattr(cfg, "head_dim", None) or d // h
        passage = min(passage_len, self._passage_limit(parsed))
        lengths = parsed.passage_lengths(passage)
        fixed = query_len + prompt_len
        total, current = 0.0, passage
        for layer in range(1, exits[-1] + 1):
            length = fixed + current
            total += 2 * length * d * (2 * h * e + 2 * g * e) + 4 * h * length * length * e + 6 * length * d * m
            if layer in lengths:
                if self.importance == "row":
                    total += 2 * length * d * g * e + 2 * d * h * e + 2 * h * length * e
                current = lengths[layer]
        return total + 2 * d * len(exits)

    # ----------------------------------------------------------------- the layer loop

    def run_layer(self, layer: int, hidden: torch.Tensor, state: BatchState) -> torch.Tensor:
        """Run decoder layer ``layer`` (1-based) on ``hidden``: the hook point for per-layer adapters.

        Subclasses can wrap it to switch adapters by ``layer`` and by ``state.factors`` (the
        compression factor in effect for each row).
        """
        module = self.decoder.layers[layer - 1]
        out = module(hidden, attention_mask=state.mask, position_ids=state.positions,
                     position_embeddings=state.rope, use_cache=False)
        return out[0] if isinstance(out, tuple) else out

    def forward_batch(self, input_ids: torch.Tensor, layouts: list[RowLayout], config: MatryoshkaConfig,
                      exits: Sequence[int], original_lengths: Sequence[int]) -> torch.Tensor:
        """Scores ``(B, len(exits))`` of a left-padded batch; ``original_lengths`` are the input passage lengths."""
        import torch

        hidden = self.decoder.embed_tokens(input_ids)
        width = input_ids.shape[1]
        positions = torch.stack([
            torch.clamp(torch.arange(width, device=input_ids.device) - (width - layout.total), min=0)
            for layout in layouts
        ])
        state = self._state(hidden, positions, layouts)
        targets = [config.passage_lengths(n) for n in original_lengths]
        factors = [config.factors(n) for n in original_lengths]
        steps = {step.layer for step in config.compress}
        scores = []
        with self._kept_attentions(exits[-1]) as attentions:
            for layer in range(1, exits[-1] + 1):
                compress = layer in steps and any(
                    t[layer] < layout.length for t, layout in zip(targets, state.layouts, strict=True))
                with self._adapters(layer, state):
                    if compress and attentions is None:
                        with torch.no_grad():
                            importance = self._attention_row(layer, hidden, state)
                    hidden = self.run_layer(layer, hidden, state)
                if compress and attentions is not None:
                    importance = attentions[layer][:, :, -1, :].detach().float().mean(dim=1).cpu().numpy()
                if layer in exits:
                    head = self.heads[str(layer)]
                    last = self.decoder.norm(hidden[:, -1]).to(head.weight.device)
                    scores.append(head(last)[:, 0].float())
                if compress:
                    hidden, state = self._merge(layer, hidden, state, importance, targets, factors)
        return torch.stack(scores, dim=1)

    # ----------------------------------------------------------------- compensation

    def set_compensation(self, compensation: FactorizedCompensation | None) -> None:
        """Use a :class:`~nestrank.models.compensation.FactorizedCompensation` (V-/H-LoRA) from now on; ``None`` removes it.

        Layer ``l`` then runs with ``V-LoRA_l + H-LoRA_k`` for the factor ``k`` in effect for each
        row, chosen per call from the configuration; nothing is merged into the weights.
        """
        if self.compensation is not None:
            self.compensation.detach()
        if compensation is not None:
            if compensation.num_layers != self.num_layers:
                raise ConfigError(f"the compensation was built for {compensation.num_layers} layers, this model "
                                  f"has {self.num_layers}")
            compensation.attach()
        self.compensation = compensation

    def _adapters(self, layer: int, state: BatchState):
        """Context in which layer ``layer``'s work (its attention row, the layer) runs: the compensation's adapters."""
        if self.compensation is None:
            return nullcontext()
        return self.compensation.active(layer, state.factors)

    # ----------------------------------------------------------------- internals

    def _score_table(self, queries, documents, config: MatryoshkaConfig, exits: tuple[int, ...],
                     batch_tokens: int | None, show_progress: bool) -> np.ndarray:
        import torch

        query_list, docs = self.pairs(queries, documents)
        budget = self.resolve_batch_tokens(batch_tokens)
        limit = self._passage_limit(config)
        encoded = [self._encode(q, d.full_text, limit) for q, d in zip(query_list, docs, strict=True)]

        def run(indices: list[int]) -> np.ndarray:
            ids, layouts, lengths = self.batch_inputs([encoded[i] for i in indices])
            return self.forward_batch(ids, layouts, config, exits, lengths).cpu().numpy()

        progress = _progress(len(encoded), show_progress)
        try:
            with torch.inference_mode():
                table = map_batches(run, [len(p.ids) for p in encoded], batch_tokens=budget,
                                    on_batch_done=progress.update if progress else None)
        finally:
            if progress:
                progress.close()
        return table.astype(np.float32)

    def _passage_limit(self, config: MatryoshkaConfig) -> int:
        cap = config.passage_tokens
        return self.max_passage_tokens if cap is None else min(cap, self.max_passage_tokens)

    def _encode(self, query: str, passage: str, limit: int) -> EncodedPair:
        before, after = self.template.split("{passage}")
        head, middle = before.split("{query}")
        # A space before a slot belongs to the slot's first token (BPE style): "B:" + " Paris".
        head, query = _move_space(head, query)
        middle, passage = _move_space(middle, passage)
        query_ids = self._tokens(query)[: self.max_query_tokens]
        prefix = self._prefix_ids + self._tokens(head) + query_ids + self._tokens(middle)
        passage_ids = self._tokens(passage)[:limit]
        suffix = self._tokens(after + self.prompt)
        return EncodedPair(prefix + passage_ids + suffix, len(prefix), len(passage_ids))

    def _tokens(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def _state(self, hidden: torch.Tensor, positions: torch.Tensor, layouts: list[RowLayout],
               factors: list[int] | None = None) -> BatchState:
        import torch

        batch, width = positions.shape
        factors = [1] * batch if factors is None else factors
        rope = self.decoder.rotary_emb(hidden, positions)
        padded = any(layout.total < width for layout in layouts)
        if not padded and self.model.config._attn_implementation == "sdpa":
            return BatchState(positions, layouts, None, rope, factors)
        index = torch.arange(width, device=hidden.device)
        starts = torch.tensor([width - layout.total for layout in layouts], device=hidden.device)
        valid_key = index[None, :] >= starts[:, None]
        allowed = (index[None, :, None] >= index[None, None, :]) & valid_key[:, None, :]
        allowed |= torch.eye(width, dtype=torch.bool, device=hidden.device)[None]
        mask = torch.zeros(batch, 1, width, width, dtype=hidden.dtype, device=hidden.device)
        mask.masked_fill_(~allowed[:, None], torch.finfo(hidden.dtype).min)
        return BatchState(positions, layouts, mask, rope, factors)

    def _attention_row(self, layer: int, hidden: torch.Tensor, state: BatchState) -> np.ndarray:
        """Layer ``layer``'s attention of the last token over every token, mean over heads: ``(B, L)``.

        The engine calls it under ``no_grad``: merge weights are constants in training.
        """
        import torch
        from transformers.models.llama.modeling_llama import rotate_half

        module = self.decoder.layers[layer - 1]
        attn = module.self_attn
        x = module.input_layernorm(hidden)
        batch, width, _ = x.shape
        e = attn.head_dim
        query = attn.q_proj(x[:, -1:]).view(batch, 1, -1, e)
        key = attn.k_proj(x).view(batch, width, -1, e)
        if hasattr(attn, "q_norm"):
            query, key = attn.q_norm(query), attn.k_norm(key)
        cos, sin = (part[:, None] for part in state.rope)  # (B, 1, L, e): broadcast over heads
        query = query.transpose(1, 2)
        query = query * cos[:, :, -1:] + rotate_half(query) * sin[:, :, -1:]
        key = key.transpose(1, 2)
        key = key * cos + rotate_half(key) * sin
        groups = key.shape[1]
        query = query.reshape(batch, groups, -1, e)  # (B, g, heads per group, e): GQA without repeat_kv
        logits = torch.matmul(query.float(), key.float().transpose(2, 3)) * attn.scaling
        starts = torch.tensor([width - layout.total for layout in state.layouts], device=x.device)
        pad = torch.arange(width, device=x.device)[None, :] < starts[:, None]
        logits = logits.masked_fill(pad[:, None, None, :], float("-inf"))
        return torch.softmax(logits, dim=-1).mean(dim=(1, 2)).float().cpu().numpy()  # float: autocast makes bf16

    @contextmanager
    def _kept_attentions(self, depth: int) -> Iterator[dict[int, torch.Tensor] | None]:
        """Reference path (``importance="eager"``): what ``output_attentions=True`` does.

        Yields a dict that collects every layer's full attention matrices ``(B, h, L, L)``,
        kept until the forward pass ends (as transformers returns them all); ``None`` on the
        row path.
        """
        if self.importance != "eager":
            yield None
            return
        attentions: dict[int, torch.Tensor] = {}
        hooks = [
            self.decoder.layers[layer - 1].self_attn.register_forward_hook(
                lambda _module, _args, output, layer=layer: attentions.__setitem__(layer, output[1]))
            for layer in range(1, depth + 1)
        ]
        try:
            yield attentions
        finally:
            for hook in hooks:
                hook.remove()

    def _merge(self, layer: int, hidden: torch.Tensor, state: BatchState, importance: np.ndarray,
               targets: list[dict[int, int]], factors: list[dict[int, int]]) -> tuple[torch.Tensor, BatchState]:
        """Merge each row's passage to its target length after ``layer``, in groups of that row's factor k."""
        width = hidden.shape[1]
        plans, in_effect = [], []
        for row, layout in enumerate(state.layouts):
            start = width - layout.total + layout.start
            row_importance = importance[row, start:start + layout.length]
            plans.append(plan_merges(row_importance, factors[row][layer], targets[row][layer]))
            in_effect.append(factors[row][layer] if plans[-1] else state.factors[row])
        hidden, positions, layouts = merge_rows(hidden, state.positions, state.layouts, plans, importance)
        return hidden, self._state(hidden, positions, layouts, in_effect)


def _checkpoint_settings(path: Path) -> dict | None:
    """The settings of a Matryoshka checkpoint directory, or ``None`` for anything else."""
    settings = read_settings(path, "matryoshka", model="Matryoshka")
    if settings is None:
        return None
    file = path / SETTINGS_FILE
    unknown = set(settings.get("reranker", {})) - set(SAVED_SETTINGS)
    if not isinstance(settings.get("compensation", {}), dict):
        raise ConfigError(f"{file}: 'compensation' must be an object of V-/H-LoRA settings")
    if "base_model" not in settings or unknown:
        raise ConfigError(f"{file}: malformed Matryoshka checkpoint settings (needs base_model; unknown "
                          f"settings: {', '.join(sorted(unknown)) or 'none'})")
    return settings


def _move_space(text: str, slot: str) -> tuple[str, str]:
    return (text[:-1], " " + slot) if text.endswith(" ") else (text, slot)


def _leading_special_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The special tokens the tokenizer puts before a text (e.g. Llama's BOS); often none."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return list(full[:start])
    return []


def _progress(total: int, show: bool):
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="rerank", unit="pair")
