"""nestrank.models.tiny: the random tiny Llama and byte tokenizer that tests and benchmarks build."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from nestrank.errors import ConfigError  # noqa: E402
from nestrank.models.backbone import load_backbone  # noqa: E402
from nestrank.models.tiny import byte_tokenizer, save_tiny_llama, tiny_llama  # noqa: E402


def test_byte_tokenizer_has_one_token_per_byte_and_its_specials():
    plain, framed = byte_tokenizer(), byte_tokenizer(bos=True, eos=True)
    assert len(plain("héllo").input_ids) == len("héllo".encode()) == 6
    assert (plain.pad_token_id, plain.bos_token_id, plain.eos_token_id, len(plain)) == (256, 257, None, 258)
    assert framed("ab").input_ids == [257, *plain("ab").input_ids] and framed.eos_token_id == 258
    assert len(framed) == 259


def test_same_arguments_same_weights_and_the_config_follows_the_tokenizer():
    tokenizer = byte_tokenizer(eos=True)
    model = tiny_llama(tokenizer, layers=3, hidden_size=16)
    again = tiny_llama(tokenizer, layers=3, hidden_size=16)
    other = tiny_llama(tokenizer, layers=3, hidden_size=16, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))
    assert not torch.equal(model.lm_head.weight, other.lm_head.weight)
    config = model.config
    assert (config.vocab_size, config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (259, 3, 16, 32)
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (256, 257, 258)
    assert not model.training and model.dtype == torch.float32 and config._attn_implementation == "sdpa"
    tied = tiny_llama(layers=1, tie_embeddings=True)
    assert tied.lm_head.weight.data_ptr() == tied.model.embed_tokens.weight.data_ptr()


def test_tasks_and_a_saved_model_loads_as_a_backbone(tmp_path):
    assert type(tiny_llama(task="base", layers=1)).__name__ == "LlamaModel"
    seq_cls = tiny_llama(task="seq-cls", layers=1)
    assert type(seq_cls).__name__ == "LlamaForSequenceClassification" and seq_cls.config.num_labels == 1
    with pytest.raises(ConfigError, match="unknown task 'reranker'; choose one of base, causal-lm, seq-cls"):
        tiny_llama(task="reranker")  # type: ignore[arg-type]
    path = save_tiny_llama(tmp_path / "tiny", layers=2)
    model, tokenizer = load_backbone(path, task="causal-lm", device="cpu", dtype="float32")
    expected = tiny_llama(layers=2)
    ids = torch.tensor([tokenizer("a cat").input_ids])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, expected(ids).logits)
