"""Tiny random Llama models and a byte-level tokenizer, built from a config: for tests and smoke runs.

Nothing here is trained or downloaded: the weights are random (seeded), so the scores mean
nothing, but every code path (depth exits, token merging, LoRA training, saving and loading)
runs in seconds on a CPU. The test suite and the ``--model tiny`` modes of the benchmarks
build their models here.

    tokenizer = byte_tokenizer()
    model = tiny_llama(tokenizer, layers=4)            # a LlamaForCausalLM, eval mode
    save_tiny_llama("tiny-llama", tokenizer, layers=4)  # model + tokenizer, loadable by load_backbone

Heavy libraries are imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from nestrank.errors import ConfigError
from nestrank.models.backbone import Task

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast


def byte_tokenizer(*, bos: bool = False, eos: bool = False) -> PreTrainedTokenizerFast:
    """A tokenizer with one token per byte (ids 0-255, no merges), ``<pad>`` (256) and ``<s>`` (257).

    Args:
        bos: prepend ``<s>`` to every encoded text (``<s>`` is the BOS token either way).
        eos: add ``</s>`` (258) as the EOS token, for input formats that append one.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {char: index for index, char in enumerate(alphabet)}
    vocab["<pad>"], vocab["<s>"] = len(vocab), len(vocab) + 1
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    if bos:
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>")
    if eos:
        tokenizer.add_special_tokens({"eos_token": "</s>"})
    return tokenizer


def tiny_llama(
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    task: Task = "causal-lm",
    layers: int = 6,
    hidden_size: int = 32,
    tie_embeddings: bool = False,
    seed: int = 0,
) -> PreTrainedModel:
    """A random fp32 Llama (4 heads, 2 KV heads, MLP twice as wide as ``hidden_size``), in eval mode.

    The vocabulary and the pad/BOS/EOS ids come from ``tokenizer`` (default: :func:`byte_tokenizer`).
    The global torch seed is set to ``seed`` just before the weights are drawn, so the same
    arguments give the same weights.

    Args:
        tokenizer: the tokenizer the model is for.
        task: ``causal-lm`` (``LlamaForCausalLM``), ``base`` (``LlamaModel``) or ``seq-cls``
            (``LlamaForSequenceClassification``, one label), as in :func:`load_backbone`.
        layers: number of decoder layers.
        hidden_size: model width.
        tie_embeddings: share the input embeddings with the LM head.
        seed: torch seed for the random weights.

    Raises:
        ConfigError: unknown ``task``.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, LlamaModel

    model_classes = {"base": LlamaModel, "causal-lm": LlamaForCausalLM, "seq-cls": LlamaForSequenceClassification}
    if task not in model_classes:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(model_classes)}")
    tokenizer = tokenizer if tokenizer is not None else byte_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, tie_word_embeddings=tie_embeddings,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    config._attn_implementation = "sdpa"
    if task == "seq-cls":
        config.num_labels = 1
    torch.manual_seed(seed)
    return model_classes[task](config).eval()


def save_tiny_llama(directory: str | Path, tokenizer: PreTrainedTokenizerBase | None = None, **options) -> Path:
    """Save :func:`tiny_llama` (``options`` are its keyword arguments) and its tokenizer to ``directory``."""
    tokenizer = tokenizer if tokenizer is not None else byte_tokenizer()
    directory = Path(directory)
    tiny_llama(tokenizer, **options).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
