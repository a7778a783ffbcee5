"""Pointwise LLM reranker (RankLLaMA, Ma et al. 2023).

Each (query, document) pair is encoded as ``query: {q} document: {title} {text}</s>``
(templates configurable; the EOS token is appended after truncation, so it is never cut),
and the score is a linear head (hidden -> 1) on the final hidden state of the last *real*
token. The last-token position comes from the attention mask, not from the pad id:
transformers' ``*ForSequenceClassification`` looks for the last token that differs from
``pad_token_id``, which silently picks the token before the appended EOS when pad == EOS.
Both left and right padding work; position ids are derived from the mask too.

Checkpoints (see ``docs/reranking.md``):

- a sequence-classification model directory (``*ForSequenceClassification``, one label);
- a PEFT adapter in the public RankLLaMA layout (``castorini/rankllama-v1-7b-lora-passage``):
  ``adapter_config.json`` with ``task_type: SEQ_CLS`` and ``base_model_name_or_path``, and
  ``adapter_model.safetensors`` holding the LoRA weights and, via ``modules_to_save``, the
  trained ``score`` head; a ``nestrank.json`` beside it (written by the pointwise trainer)
  supplies the trained ``max_length`` and templates.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nestrank.data.corpus import Document
from nestrank.errors import ConfigError
from nestrank.integrity import reading
from nestrank.models.backbone import check_special_tokens
from nestrank.models.batching import map_batches
from nestrank.models.pooling import last_token_index
from nestrank.models.reranker import Reranker
from nestrank.models.settings import RESAVE, SETTINGS_FILE, adapter_task, detect_kind, read_settings, verify_checkpoint

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

QUERY_TEMPLATE = "query: {query}"
DOCUMENT_TEMPLATE = "document: {title} {text}"


def check_no_config(config: Any) -> None:
    """Raise :class:`ConfigError` unless ``config`` is ``None``: a pointwise reranker has no run-time configuration."""
    if config is not None:
        raise ConfigError(f"PointwiseReranker has no run-time configuration, got config={config!r} "
                          "(depth/width configs are for the Matryoshka reranker; pass config=None)")


def format_document(doc: Document, template: str = DOCUMENT_TEMPLATE) -> str:
    """Fill a document template; with an empty title the ``{title} `` slot is dropped."""
    if not doc.title.strip():
        template = template.replace("{title} ", "").replace("{title}", "")
    return template.format(title=doc.title.strip(), text=doc.text.strip())


class PointwiseReranker(Reranker):
    """RankLLaMA-style reranker: one score per pair from a linear head on the last token.

    Build it with :meth:`from_pretrained`, or wrap an already loaded transformers
    ``*ForSequenceClassification`` model (or a ``peft.PeftModel`` around one) that has a
    ``score`` head with one output.
    """

    default_batch_tokens = 16384

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_length: int = 512,
        query_template: str = QUERY_TEMPLATE,
        document_template: str = DOCUMENT_TEMPLATE,
        max_batch_size: int = 64,
    ) -> None:
        seq_cls = model.get_base_model() if hasattr(model, "get_base_model") else model
        head = getattr(seq_cls, "score", None)
        backbone = getattr(seq_cls, getattr(seq_cls, "base_model_prefix", "model"), None)
        if head is None or backbone is None:
            raise ConfigError(f"{type(seq_cls).__name__} is not a decoder sequence-classification model with a "
                              "'score' head (fix: load a *ForSequenceClassification checkpoint or a SEQ_CLS adapter)")
        if seq_cls.config.num_labels != 1:
            raise ConfigError(f"the score head has {seq_cls.config.num_labels} outputs; a pointwise reranker needs 1")
        check_special_tokens(tokenizer, eos=True)
        if max_length < 8:
            raise ConfigError(f"max_length must be at least 8 tokens, got {max_length}")
        for name, template, fields in (("query_template", query_template, ("{query}",)),
                                       ("document_template", document_template, ("{text}",))):
            missing = [f for f in fields if f not in template]
            if missing:
                raise ConfigError(f"{name} {template!r} lacks {', '.join(missing)}")
        self.model = model
        self.tokenizer = tokenizer
        self.backbone = backbone
        self.head = head
        self.max_length = max_length
        self.query_template = query_template
        self.document_template = document_template
        self.max_batch_size = max_batch_size

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        device: str | None = None,
        dtype: str = "auto",
        merge_lora: bool = False,
        base_model: str | None = None,
        attn_implementation: str | None = "sdpa",
        verify: str = "fast",
        **kwargs: Any,
    ) -> PointwiseReranker:
        """Load a sequence-classification checkpoint or a RankLLaMA-layout PEFT adapter.

        ``base_model`` replaces the adapter's ``base_model_name_or_path`` (e.g. a local copy
        of Llama-2-7b); ``merge_lora`` merges the adapter for faster inference; other keyword
        arguments go to the constructor (``max_length``, templates, ``max_batch_size``). A
        checkpoint nestrank wrote is checked against its ``checksums.json`` first (``verify``:
        ``fast``, ``full`` or ``none``; see :mod:`nestrank.integrity`).
        """
        from nestrank.models.backbone import load_backbone, resolve_source

        source = resolve_source(name_or_path, base_model=base_model)
        saved = _saved_settings(Path(source.adapter or source.path))  # first: a nestrank.json of another kind
        verify_checkpoint(source.adapter or source.path, verify, what="pointwise reranker checkpoint", base=base_model)
        if source.adapter:
            _check_seq_cls_adapter(Path(source.adapter))
        elif Path(source.path).is_dir() and detect_kind(source.path) != "pointwise":
            raise ConfigError(f"{name_or_path} is not a sequence-classification checkpoint: its score head would be "
                              "random (fix: pass a *ForSequenceClassification directory or a SEQ_CLS PEFT adapter, "
                              "e.g. the layout of castorini/rankllama-v1-7b-lora-passage)")
        model, tokenizer = load_backbone(name_or_path, task="seq-cls", num_labels=1, dtype=dtype, device=device,
                                         merge_lora=merge_lora, base_model=base_model,
                                         attn_implementation=attn_implementation)
        return cls(model, tokenizer, **{**saved, **kwargs})

    def save_settings(self, path: str | Path) -> Path:
        """Write ``nestrank.json`` (max length, templates) into ``path``, read back by :meth:`from_pretrained`."""
        settings = {"kind": "pointwise", "max_length": self.max_length, "query_template": self.query_template,
                    "document_template": self.document_template}
        target = Path(path) / SETTINGS_FILE
        target.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        return target

    @property
    def device(self) -> torch.device:
        """The device the model runs on."""
        return next(self.model.parameters()).device

    def encode(self, queries: Sequence[str], documents: Sequence[Document]) -> list[list[int]]:
        """Token ids of each pair: the tokenizer's pair encoding cut to ``max_length - 1``, then EOS.

        Truncation is ``longest_first``: with the usual short query only the document is
        cut; a query longer than the document is cut too, so no input can overflow.
        """
        query_texts = [self.query_template.format(query=q.strip()) for q in queries]
        doc_texts = [format_document(d, self.document_template) for d in documents]
        encoded = self.tokenizer(query_texts, doc_texts, max_length=self.max_length - 1, truncation="longest_first",
                                 add_special_tokens=True, return_attention_mask=False)["input_ids"]
        eos = self.tokenizer.eos_token_id
        return [ids if ids and ids[-1] == eos else [*ids, eos] for ids in encoded]

    def score(
        self,
        queries: str | Sequence[str],
        documents: Sequence[Document | str],
        *,
        config: Any = None,
        batch_tokens: int | None = None,
        show_progress: bool = False,
    ) -> np.ndarray:
        """One float32 score per document, in input order (see :meth:`Reranker.score`).

        ``config`` must be ``None``: a pointwise reranker has no run-time configuration.
        """
        check_no_config(config)
        query_list, docs = self.pairs(queries, documents)
        budget = self.resolve_batch_tokens(batch_tokens)
        encoded = self.encode(query_list, docs)
        progress = None
        if show_progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=len(encoded), desc="reranking", unit="pair")
        try:
            return map_batches(lambda batch: self._forward([encoded[i] for i in batch]), [len(e) for e in encoded],
                               batch_tokens=budget, max_batch_size=self.max_batch_size,
                               on_batch_done=progress.update if progress is not None else None)
        finally:
            if progress is not None:
                progress.close()

    def _forward(self, batch: list[list[int]]) -> np.ndarray:
        """Scores of one padded batch of token-id lists."""
        import torch

        input_ids, mask = self.pad(batch)
        with torch.inference_mode():
            scores = self.forward_batch(input_ids, mask)
        return scores.float().cpu().numpy()

    def pad(self, batch: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)`` of token-id lists (from :meth:`encode`), padded, on the model's device."""
        padded = self.tokenizer.pad({"input_ids": batch}, return_tensors="pt", return_attention_mask=True)
        return padded["input_ids"].to(self.device), padded["attention_mask"].to(self.device)

    def forward_batch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Scores ``(B,)`` of a padded batch, with autograd (the trainer's forward; :meth:`score` wraps it)."""
        import torch

        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=positions).last_hidden_state
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_token_index(attention_mask)]
        return self.head(last).squeeze(-1)


def _saved_settings(path: Path) -> dict[str, Any]:
    """Constructor defaults from a checkpoint's ``nestrank.json`` (written by the pointwise trainer), if any."""
    saved = read_settings(path, "pointwise", model="pointwise reranker", what="reranker") or {}
    return {key: saved[key] for key in ("max_length", "query_template", "document_template") if key in saved}


def _check_seq_cls_adapter(adapter: Path) -> None:
    """An adapter must be SEQ_CLS and carry a trained score head (modules_to_save), or scores are random."""
    task = adapter_task(adapter)
    if task != "SEQ_CLS":
        raise ConfigError(f"{adapter}/adapter_config.json has task_type {task!r}; a pointwise "
                          "reranker needs a SEQ_CLS adapter with its score head (the RankLLaMA layout)")
    weights = adapter / "adapter_model.safetensors"
    if weights.is_file():
        from safetensors import safe_open

        with reading(weights, "adapter weights", RESAVE), safe_open(str(weights), framework="pt") as handle:
            has_head = any(".score." in key or key.startswith("score.") for key in handle.keys())  # noqa: SIM118
        if not has_head:
            raise ConfigError(f"{weights} holds no score head weights; save the adapter with "
                              "modules_to_save=['score'] (peft does this for task_type SEQ_CLS)")
