"""Training of a pointwise reranker (RankLLaMA, Ma et al. 2023): ``reranker.kind = "pointwise"``.

The model is the backbone as a sequence-classification decoder with one output: a linear
``score`` head on the last real token of ``query: {q} document: {title} {text}</s>``
(:class:`~nestrank.models.pointwise.PointwiseReranker`). The head starts from transformers'
random initialisation, as in RankLLaMA; LoRA (peft, ``task_type = SEQ_CLS``) adapts the
backbone and the head trains in full (``modules_to_save``). Each query's group of
``data.group_size`` passages (1 positive + hard negatives, no in-batch negatives) gives
``-log softmax(scores / train.temperature)[positive]``. The input is cut to
``data.query_max_length + data.passage_max_length`` tokens (``longest_first``: the passage
first), EOS kept (:func:`~nestrank.train.losses.group.group_cross_entropy`; logged part: ``ce``).
Loop, schedule, logging, DDP, checkpoints and resume are :class:`~nestrank.train.loop.RerankerTrainer`'s.

Checkpoints (``checkpoint-STEP/``, ``final/``) are PEFT adapters in the public RankLLaMA
layout, which :meth:`PointwiseReranker.from_pretrained` and ``nestrank rerank --model DIR``
load (``base_model_name_or_path`` is ``model.backbone`` as configured)::

    adapter_config.json, adapter_model.safetensors   LoRA + the score head (task_type SEQ_CLS)
    nestrank.json                                    max_length and templates
    tokenizer files
    trainer_state.json, optimizer.pt, scheduler.json for train.resume_from
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from nestrank.train.backbone import add_lora, enable_gradient_checkpointing
from nestrank.train.batches import ContrastiveBatch
from nestrank.train.checkpoint import load_adapter_weights
from nestrank.train.loop import RerankerTrainer
from nestrank.train.losses.group import group_cross_entropy

if TYPE_CHECKING:
    import torch
    from peft import PeftModel

    from nestrank.models.pointwise import PointwiseReranker
    from nestrank.train.config import TrainConfig

__all__ = ["PointwiseTrainer", "build_pointwise"]


def build_pointwise(config: TrainConfig, device: str | None = None
                    ) -> tuple[PointwiseReranker, PeftModel, list[torch.nn.Parameter]]:
    """Load ``model.backbone`` as a one-output sequence-classifier with LoRA; returns ``(reranker, peft_model, params)``."""
    from nestrank.models.backbone import load_backbone
    from nestrank.models.pointwise import PointwiseReranker

    m, d = config.model, config.data
    model, tokenizer = load_backbone(m.backbone, task="seq-cls", num_labels=1,
                                     dtype="bfloat16" if m.dtype == "bfloat16" else "float32", device=device,
                                     attn_implementation=m.attn_implementation)
    model.requires_grad_(False)
    if m.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    peft_model = add_lora(model, config, "SEQ_CLS", modules_to_save=["score"])
    peft_model.peft_config["default"].base_model_name_or_path = m.backbone  # as configured: a preset, path or id
    reranker = PointwiseReranker(peft_model, tokenizer, max_length=d.query_max_length + d.passage_max_length)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    peft_model.train()
    return reranker, peft_model, params


class PointwiseTrainer(RerankerTrainer):
    """Trains a :class:`~nestrank.models.pointwise.PointwiseReranker`; see the module docstring.

    After :meth:`train`, :attr:`reranker` is the trained reranker (in eval mode).
    """

    label = "train reranker (pointwise)"
    reranker: PointwiseReranker | None
    _peft_model: PeftModel | None

    def setup(self, device: str) -> tuple[torch.nn.Module, list[torch.nn.Parameter]]:
        """The reranker (:func:`build_pointwise`) as a pair-scoring module, and its trainable parameters."""
        import torch

        reranker, self._peft_model, params = build_pointwise(self.config, device=device)
        self.reranker = reranker
        self._pairs: dict[tuple[str, str], list[int]] = {}  # tokenized pairs, reused across steps

        class PairScorer(torch.nn.Module):  # owns the PEFT model, so DDP can wrap it
            def __init__(self) -> None:
                super().__init__()
                self.model = reranker.model

            def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
                return reranker.forward_batch(input_ids, attention_mask)

        return PairScorer(), params

    def batch_loss(self, batch: ContrastiveBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Group cross-entropy of one micro-batch."""
        reranker = self.reranker
        assert reranker is not None and self.module is not None
        size = self.config.data.group_size
        queries = [q for q in batch.queries for _ in range(size)]
        keys = [(q, doc.full_text) for q, doc in zip(queries, batch.passages, strict=True)]
        fresh = [keys.index(key) for key in dict.fromkeys(keys) if key not in self._pairs]
        if fresh:  # each pair is tokenized once per run
            ids = reranker.encode([queries[i] for i in fresh], [batch.passages[i] for i in fresh])
            self._pairs.update(zip([keys[i] for i in fresh], ids, strict=True))
        input_ids, mask = reranker.pad([self._pairs[key] for key in keys])
        with self.accelerator.autocast():
            scores = self.module(input_ids, mask).view(len(batch.queries), size)
        loss = group_cross_entropy(scores, self.config.train.temperature)
        return loss, {"ce": float(loss.detach())}

    def log_fields(self) -> dict[str, Any]:
        """No students (the field keeps the reranker trainers' log layout)."""
        return {"students": []}

    def save_model(self, path: Path, state: Any) -> None:
        """The adapter with the score head (RankLLaMA layout), the tokenizer and ``nestrank.json``."""
        reranker, peft_model = self.reranker, self._peft_model
        assert reranker is not None and peft_model is not None
        peft_model.save_pretrained(path, safe_serialization=True, save_embedding_layers=False)
        reranker.tokenizer.save_pretrained(path)
        reranker.save_settings(path)

    def load_model(self, path: Path) -> None:
        """The adapter (and score head) of checkpoint ``path``."""
        assert self._peft_model is not None
        load_adapter_weights(self._peft_model, path, path)

    def finish(self) -> None:
        """The trained reranker in eval mode."""
        assert self.reranker is not None
        self.reranker.model.eval()
