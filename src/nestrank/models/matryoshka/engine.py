"""The Matryoshka forward pass: depth by early exits, width by token merging (Liu et al. 2025, section 3).

The engine drives a Hugging Face Llama-family causal LM (Llama, Mistral, Qwen2/3, SmolLM2)
module by module: ``embed_tokens``, ``rotary_emb``, then ``layers[l]`` one at a time, and
``norm``. No model file is forked. One pass over a left-padded batch (:func:`forward_batch`)::

    h_0 = embed(ids)
    for l = 1 .. n                                   n: the deepest exit; layers after it never run
        a_l = last token's attention row in layer l  only when the passage shrinks after l
        h_l = layer_l(h_(l-1))                       with layer l's compensation (3.3), if any
        s_l = head_l(norm(h_l[last]))                when l is an exit layer (depth)
        h_l = merge(h_l, a_l)                        passage tokens merged in groups of k (width)

**Depth.** The score at exit layer n is ``head_n(norm(h_n[last]))``: ``norm`` is the model's
final norm and ``head_n`` a ``Linear(hidden, 1, bias=True)`` keyed ``str(n)`` in the
reranker's ``heads``. Every head starts as the LM head's row for the "Yes" token with a zero
bias (:func:`init_heads`), so untrained, exit N gives the base LM's "Yes" logit.

**Width.** A compression after layer l takes the attention row of layer l's own
self-attention for the last token (:func:`attention_row`): ``input_layernorm`` of the layer's
input, the last token's query and every key through ``q_proj``/``k_proj`` (+ q/k norms when
the model has them) and RoPE, softmax over the row (GQA heads share their key head), averaged
over heads. That is exactly the attention layer l applies, computed as one row, never an
L x L matrix. Layer l then runs at full length and its *output* is merged
(:mod:`~nestrank.models.matryoshka.token_merge`), so layers l+1.. run on the shorter sequence.
``importance="eager"`` instead reads the same row out of the full attention matrices of a
model loaded with eager attention, all layers' matrices kept as ``output_attentions=True``
does (:func:`kept_attentions`; the reference approach of the FlagEmbedding research code).

**Batches** are left-padded, so the last token is at index -1 in every row. The attention mask
is rebuilt from the row lengths after every merge (:func:`batch_state`): a 4-D additive mask,
causal over the real tokens of each row, padding hidden (padding rows attend to themselves
only, so no row is fully masked); with SDPA and no padding no mask is passed (the causal
kernel is used). Position ids are per token: the original ones for unmerged tokens, a group's
first position for merged ones, so query and prompt keep their positions and distances.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from nestrank.errors import ConfigError
from nestrank.models.matryoshka.token_merge import RowLayout, merge_rows, plan_merges

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from nestrank.models.matryoshka.compensation import FactorizedCompensation
    from nestrank.models.matryoshka.config import MatryoshkaConfig

Importance = Literal["row", "eager"]
IMPORTANCES: tuple[str, ...] = ("row", "eager")


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


class Host(Protocol):
    """What :func:`forward_batch` needs of the reranker it runs for."""

    decoder: Any
    heads: torch.nn.ModuleDict
    importance: str
    compensation: FactorizedCompensation | None

    def run_layer(self, layer: int, hidden: torch.Tensor, state: BatchState) -> torch.Tensor: ...


def check_model(model: PreTrainedModel, importance: str) -> Any:
    """The decoder (``model.model``) of a Llama-family causal LM the engine can drive; else :class:`ConfigError`."""
    decoder = getattr(model, "model", None)
    needed = ("embed_tokens", "rotary_emb", "layers", "norm")
    if decoder is None or not all(hasattr(decoder, name) for name in needed) or model.get_output_embeddings() is None:
        raise ConfigError(f"{type(model).__name__} is not a Llama-family causal LM (needs model.embed_tokens, "
                          "rotary_emb, layers, norm and an LM head; fix: load it with task='causal-lm')")
    attn = model.config._attn_implementation
    if importance not in IMPORTANCES:
        raise ConfigError(f"importance must be 'row' or 'eager', got {importance!r}")
    if importance == "eager" and attn != "eager":
        raise ConfigError("importance='eager' reads full attention matrices: load the model with "
                          "attn_implementation='eager'")
    if attn not in ("sdpa", "eager"):
        raise ConfigError(f"attention implementation {attn!r} is not supported by the Matryoshka engine "
                          "(fix: load the model with attn_implementation='sdpa')")
    return decoder


def init_heads(model: PreTrainedModel, yes_token_id: int, num_layers: int) -> torch.nn.ModuleDict:
    """One score head per layer (keys ``"1"`` .. ``str(num_layers)``), each the LM head's row for ``yes_token_id``."""
    import torch

    lm_head = model.get_output_embeddings()
    weight = lm_head.weight[yes_token_id].detach()
    bias = getattr(lm_head, "bias", None)
    heads = torch.nn.ModuleDict()
    for layer in range(1, num_layers + 1):
        head = torch.nn.Linear(weight.shape[0], 1, bias=True, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            head.weight.copy_(weight[None, :])
            head.bias.fill_(0.0 if bias is None else float(bias[yes_token_id]))
        heads[str(layer)] = head
    return heads.eval()


def forward_batch(host: Host, input_ids: torch.Tensor, layouts: list[RowLayout], config: MatryoshkaConfig,
                  exits: Sequence[int], original_lengths: Sequence[int]) -> torch.Tensor:
    """Scores ``(B, len(exits))`` of a left-padded batch; ``original_lengths`` are the input passage lengths."""
    return forward_passes(host, input_ids, layouts, original_lengths, [(config, exits)])[0]


@dataclass
class _Stream:
    """Hidden states shared by the passes whose layers so far are the same computation."""

    hidden: torch.Tensor
    state: BatchState
    members: list[int]


def forward_passes(host: Host, input_ids: torch.Tensor, layouts: list[RowLayout], original_lengths: Sequence[int],
                   passes: Sequence[tuple[MatryoshkaConfig, Sequence[int]]]) -> list[torch.Tensor]:
    """Scores ``(B, len(exits))`` of several passes ``(config, exits)`` over the same batch, sharing their work.

    Passes run as one full-width *stream* until a pass compresses: it then forks a stream of its
    own from the shared hidden states after that layer (passes that merge alike share the fork).
    Each pass's scores equal :func:`forward_batch`'s for it alone: a layer before a pass's first
    merge computes the same thing in every pass, so it runs once (and, in training, is
    backpropagated once). Layers after a stream's deepest exit never run.
    """
    import torch

    decoder = host.decoder
    hidden = decoder.embed_tokens(input_ids)
    width = input_ids.shape[1]
    positions = torch.stack([
        torch.clamp(torch.arange(width, device=input_ids.device) - (width - layout.total), min=0)
        for layout in layouts
    ])
    targets = [[config.passage_lengths(n) for n in original_lengths] for config, _ in passes]
    factors = [[config.factors(n) for n in original_lengths] for config, _ in passes]
    steps = [{step.layer for step in config.compress} for config, _ in passes]
    deepest = [max(exits) for _, exits in passes]
    scores: list[dict[int, torch.Tensor]] = [{} for _ in passes]
    streams = [_Stream(hidden, batch_state(decoder, hidden, positions, layouts), list(range(len(passes))))]
    with kept_attentions(decoder, max(deepest), host.importance == "eager") as attentions:
        for layer in range(1, max(deepest) + 1):
            forks: list[_Stream] = []
            for stream in streams:
                state = stream.state
                merging = [m for m in stream.members if layer in steps[m] and any(
                    t[layer] < layout.length for t, layout in zip(targets[m], state.layouts, strict=True))]
                with adapters(host.compensation, layer, state):
                    if merging and attentions is None:
                        with torch.no_grad():  # merge weights are constants in training
                            importance = attention_row(decoder, layer, stream.hidden, state)
                    stream.hidden = host.run_layer(layer, stream.hidden, state)
                if merging and attentions is not None:
                    importance = attentions[layer][:, :, -1, :].detach().float().mean(dim=1).cpu().numpy()
                readers = [m for m in stream.members if layer in passes[m][1]]
                if readers:
                    head = host.heads[str(layer)]
                    last = decoder.norm(stream.hidden[:, -1]).to(head.weight.device)
                    score = head(last)[:, 0].float()
                    for m in readers:
                        scores[m][layer] = score
                groups: dict[tuple, list[int]] = {}
                for m in merging:
                    groups.setdefault(tuple((t[layer], f[layer]) for t, f in zip(targets[m], factors[m], strict=True)),
                                      []).append(m)
                for members in groups.values():
                    first = members[0]
                    merged, merged_state = merge(decoder, layer, stream.hidden, state, importance, targets[first],
                                                 factors[first])
                    forks.append(_Stream(merged, merged_state, members))
                stream.members = [m for m in stream.members if m not in merging]
            streams = [s for s in streams + forks if any(deepest[m] > layer for m in s.members)]
    return [torch.stack([scores[m][layer] for layer in exits], dim=1) for m, (_, exits) in enumerate(passes)]


def run_layer(decoder: Any, layer: int, hidden: torch.Tensor, state: BatchState) -> torch.Tensor:
    """Decoder layer ``layer`` (1-based) applied to ``hidden`` under ``state``'s mask, positions and RoPE."""
    module = decoder.layers[layer - 1]
    out = module(hidden, attention_mask=state.mask, position_ids=state.positions,
                 position_embeddings=state.rope, use_cache=False)
    return out[0] if isinstance(out, tuple) else out


def adapters(compensation: FactorizedCompensation | None, layer: int, state: BatchState) -> AbstractContextManager:
    """Context in which layer ``layer``'s work (its attention row, the layer) runs: the compensation's adapters."""
    if compensation is None:
        return nullcontext()
    return compensation.active(layer, state.factors)


def batch_state(decoder: Any, hidden: torch.Tensor, positions: torch.Tensor, layouts: list[RowLayout],
                factors: list[int] | None = None) -> BatchState:
    """The :class:`BatchState` of a left-padded batch: RoPE for ``positions`` and the attention mask of ``layouts``."""
    import torch

    batch, width = positions.shape
    factors = [1] * batch if factors is None else factors
    rope = decoder.rotary_emb(hidden, positions)
    padded = any(layout.total < width for layout in layouts)
    if not padded and decoder.config._attn_implementation == "sdpa":
        return BatchState(positions, layouts, None, rope, factors)
    index = torch.arange(width, device=hidden.device)
    starts = torch.tensor([width - layout.total for layout in layouts], device=hidden.device)
    valid_key = index[None, :] >= starts[:, None]
    allowed = (index[None, :, None] >= index[None, None, :]) & valid_key[:, None, :]
    allowed |= torch.eye(width, dtype=torch.bool, device=hidden.device)[None]
    mask = torch.zeros(batch, 1, width, width, dtype=hidden.dtype, device=hidden.device)
    mask.masked_fill_(~allowed[:, None], torch.finfo(hidden.dtype).min)
    return BatchState(positions, layouts, mask, rope, factors)


def attention_row(decoder: Any, layer: int, hidden: torch.Tensor, state: BatchState) -> np.ndarray:
    """Layer ``layer``'s attention of the last token over every token, mean over heads: ``(B, L)`` on the CPU."""
    import torch
    from transformers.models.llama.modeling_llama import rotate_half

    module = decoder.layers[layer - 1]
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
def kept_attentions(decoder: Any, depth: int, eager: bool) -> Iterator[dict[int, torch.Tensor] | None]:
    """Reference path (``importance="eager"``): what ``output_attentions=True`` does.

    Yields a dict that collects every layer's full attention matrices ``(B, h, L, L)``,
    kept until the forward pass ends (as transformers returns them all); ``None`` when not
    ``eager`` (the row path).
    """
    if not eager:
        yield None
        return
    attentions: dict[int, torch.Tensor] = {}
    hooks = [
        decoder.layers[layer - 1].self_attn.register_forward_hook(
            lambda _module, _args, output, layer=layer: attentions.__setitem__(layer, output[1]))
        for layer in range(1, depth + 1)
    ]
    try:
        yield attentions
    finally:
        for hook in hooks:
            hook.remove()


def merge(decoder: Any, layer: int, hidden: torch.Tensor, state: BatchState, importance: np.ndarray,
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
    return hidden, batch_state(decoder, hidden, positions, layouts, in_effect)
