"""The Matryoshka reranker: one LLM reranker whose depth and width are chosen per call.

:class:`MatryoshkaReranker` is the public face of the package: it builds pair inputs
(:mod:`.inputs`), runs them through the engine (:mod:`.engine`, the paper's section 3) under a
configuration (:mod:`.config`) or a named profile (:mod:`.profiles`), optionally with a
factorized compensation (:mod:`.compensation`), loads and saves checkpoints
(:mod:`.checkpoint`) and counts FLOPs (:mod:`.flops`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nestrank.data.corpus import Document
from nestrank.errors import ConfigError
from nestrank.models.batching import map_batches
from nestrank.models.matryoshka import checkpoint, engine
from nestrank.models.matryoshka.config import MatryoshkaConfig
from nestrank.models.matryoshka.engine import BatchState
from nestrank.models.matryoshka.flops import pair_flops
from nestrank.models.matryoshka.inputs import (
    DEFAULT_PROMPT,
    DEFAULT_TEMPLATE,
    EncodedPair,
    PairFormat,
    batch_inputs,
    check_positive,
)
from nestrank.models.matryoshka.profiles import Profile, default_profiles, resolve_config
from nestrank.models.matryoshka.token_merge import RowLayout
from nestrank.models.reranker import Reranker

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from nestrank.models.matryoshka.compensation import FactorizedCompensation
    from nestrank.models.matryoshka.engine import Importance

__all__ = ["DEFAULT_PROMPT", "DEFAULT_TEMPLATE", "ConfigLike", "MatryoshkaReranker", "UntrainedExitWarning"]

ConfigLike = MatryoshkaConfig | str | None


class UntrainedExitWarning(UserWarning):
    """A score was read at an exit layer whose head training never reached (its head is the untrained "Yes" row)."""


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
        max_passage_tokens / max_query_tokens: truncation limits, in tokens (224 suits
            passages; use 2048 for documents).
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
        self.decoder = engine.check_model(model, importance)
        self.pair_format = PairFormat(tokenizer, template, prompt, max_query_tokens)
        check_positive("max_passage_tokens", max_passage_tokens)
        self.model = model
        self.tokenizer = tokenizer
        self.max_passage_tokens = max_passage_tokens
        self.importance = importance
        self.yes_token = yes_token
        self.base_model: str | None = None  # what from_pretrained loaded; a checkpoint refers to it
        #: Exit layers whose heads were trained (recorded by the trainer in the checkpoint); ``None``: unknown.
        self.trained_exits: tuple[int, ...] | None = None
        self._warned: set[tuple[int, ...]] = set()
        self.compensation: FactorizedCompensation | None = None
        self.num_layers = len(self.decoder.layers)
        self.profiles: dict[str, Profile] = default_profiles(self.num_layers)
        yes_ids = tokenizer(yes_token, add_special_tokens=False)["input_ids"]
        if not yes_ids:
            raise ConfigError(f"yes_token {yes_token!r} encodes to no tokens")
        self.yes_token_id = int(yes_ids[0])
        self.heads = engine.init_heads(model, self.yes_token_id, self.num_layers)

    @property
    def template(self) -> str:
        """The pair template (``{query}`` before ``{passage}``)."""
        return self.pair_format.template

    @property
    def prompt(self) -> str:
        """The instruction after the template."""
        return self.pair_format.prompt

    @property
    def max_query_tokens(self) -> int:
        """The query's truncation limit, in tokens."""
        return self.pair_format.max_query_tokens

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path = "smollm2-135m",
        *,
        dtype: str | torch.dtype = "auto",
        device: str | torch.device | None = None,
        importance: Importance = "row",
        merge_lora: bool = True,
        verify: str = "fast",
        **kwargs,
    ) -> MatryoshkaReranker:
        """Load a backbone with :func:`nestrank.models.load_backbone` (``task="causal-lm"``) and wrap it.

        ``name_or_path`` is a backbone or a Matryoshka checkpoint directory (see
        :meth:`save_pretrained`); a checkpoint's ``lora/`` adapter (the distillation LoRA) is
        merged into the base weights, unless ``merge_lora=False`` (the trainer then loads it
        itself, to continue training it). ``importance="eager"`` loads the model with eager
        attention; other keyword arguments go to the constructor (template, prompt,
        yes_token, max_passage_tokens...) and win over a checkpoint's recorded settings.

        A checkpoint's files are checked against its ``checksums.json`` first (``verify``:
        ``fast``, the default, ``full`` or ``none``; see :mod:`nestrank.integrity`), and its
        base model against the weights it was trained on.
        """
        return checkpoint.load(cls, name_or_path, dtype=dtype, device=device, importance=importance,
                               merge_lora=merge_lora, verify=verify, **kwargs)

    def save_pretrained(self, path: str | Path, *, base_model: str | None = None) -> Path:
        """Write a Matryoshka checkpoint directory atomically and return its path.

        Layout (see :mod:`nestrank.models.matryoshka.checkpoint`): ``nestrank.json`` (``kind``,
        ``base_model``, the reranker settings, and the ``compensation`` settings when one is
        set), ``heads.safetensors`` and, with a compensation, ``compensation.safetensors``. The
        backbone is not copied: ``base_model`` (default: what :meth:`from_pretrained` loaded)
        names it, as a preset, hub id or path. :meth:`from_pretrained` loads the directory.
        """
        return checkpoint.save(self, path, base_model)

    # ----------------------------------------------------------------- scoring

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
        self._check_trained(exits)
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
        self._check_trained(layers)
        table = self._score_table(queries, documents, parsed, layers, batch_tokens, show_progress)
        return {layer: table[:, i] for i, layer in enumerate(layers)}

    def resolve_config(self, config: ConfigLike) -> MatryoshkaConfig:
        """``config`` parsed: a profile name of :attr:`profiles` gives that profile's configuration.

        Raises:
            ConfigError: a name that is neither a profile nor a valid configuration string
                (the message lists the profiles).
        """
        return resolve_config(config, self.profiles)

    def flops(self, config: ConfigLike, query_len: int, passage_len: int, prompt_len: int) -> float:
        """Analytic matmul FLOPs of scoring one pair under ``config`` (see :mod:`nestrank.models.matryoshka.flops`).

        ``query_len`` counts the query's tokens, ``passage_len`` the passage's (truncated as
        scoring truncates it), ``prompt_len`` every other token (template, prompt, special tokens).
        """
        parsed = self.resolve_config(config)
        exits = parsed.validate(self.num_layers)
        return pair_flops(self.model.config, parsed, exits, fixed_len=query_len + prompt_len,
                          passage_len=min(passage_len, self._passage_limit(parsed)),
                          attention_row=self.importance == "row")

    # ----------------------------------------------------------------- inputs and the layer loop

    def encode(self, query: str, document: Document | str, config: ConfigLike = None) -> EncodedPair:
        """Token ids of one pair, with the passage span (truncation applied)."""
        text = document.full_text if isinstance(document, Document) else document
        return self.pair_format.encode(query, text, self._passage_limit(self.resolve_config(config)))

    def batch_inputs(self, pairs: Sequence[EncodedPair]) -> tuple[torch.Tensor, list[RowLayout], list[int]]:
        """:meth:`forward_batch`'s inputs of encoded pairs: left-padded ids on the model's device, layouts, lengths."""
        return batch_inputs(pairs, self.tokenizer.pad_token_id, self.decoder.embed_tokens.weight.device)

    def forward_batch(self, input_ids: torch.Tensor, layouts: list[RowLayout], config: MatryoshkaConfig,
                      exits: Sequence[int], original_lengths: Sequence[int]) -> torch.Tensor:
        """Scores ``(B, len(exits))`` of a left-padded batch, with autograd (see :func:`.engine.forward_batch`)."""
        return engine.forward_batch(self, input_ids, layouts, config, exits, original_lengths)

    def forward_passes(self, input_ids: torch.Tensor, layouts: list[RowLayout], original_lengths: Sequence[int],
                       passes: Sequence[tuple[MatryoshkaConfig, Sequence[int]]]) -> list[torch.Tensor]:
        """Scores of several ``(config, exits)`` passes over one batch, layers they share run once (:func:`.engine.forward_passes`)."""
        return engine.forward_passes(self, input_ids, layouts, original_lengths, passes)

    def run_layer(self, layer: int, hidden: torch.Tensor, state: BatchState) -> torch.Tensor:
        """Run decoder layer ``layer`` (1-based) on ``hidden``: the hook point for per-layer adapters.

        Subclasses can wrap it to switch adapters by ``layer`` and by ``state.factors`` (the
        compression factor in effect for each row).
        """
        return engine.run_layer(self.decoder, layer, hidden, state)

    def set_compensation(self, compensation: FactorizedCompensation | None) -> None:
        """Use a :class:`~.compensation.FactorizedCompensation` (V-/H-LoRA) from now on; ``None`` removes it.

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

    # ----------------------------------------------------------------- internals

    def _check_trained(self, exits: Sequence[int]) -> None:
        untrained = tuple(n for n in exits if self.trained_exits is not None and n not in self.trained_exits)
        if untrained and untrained not in self._warned:
            self._warned.add(untrained)
            warnings.warn(f"exit layer(s) {', '.join(map(str, untrained))} were not trained (their heads are the "
                          f"untrained 'Yes' row); trained exits: {', '.join(map(str, self.trained_exits or ()))}",
                          UntrainedExitWarning, stacklevel=3)

    def _score_table(self, queries, documents, config: MatryoshkaConfig, exits: tuple[int, ...],
                     batch_tokens: int | None, show_progress: bool) -> np.ndarray:
        import torch

        query_list, docs = self.pairs(queries, documents)
        budget = self.resolve_batch_tokens(batch_tokens)
        limit = self._passage_limit(config)
        encoded = [self.pair_format.encode(q, d.full_text, limit) for q, d in zip(query_list, docs, strict=True)]

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


def _progress(total: int, show: bool):
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="rerank", unit="pair")
