"""The Matryoshka engine on tiny random Llama models: depth, width, batching and errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers import DOCS, QUERY, truncated

from nestrank.errors import ConfigError
from nestrank.models.matryoshka import MatryoshkaReranker
from nestrank.models.matryoshka.engine import attention_row, batch_state
from nestrank.models.matryoshka.token_merge import RowLayout
from nestrank.models.reranker import RerankInputError
from nestrank.models.tiny import byte_tokenizer, tiny_llama


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


@pytest.fixture(scope="module")
def reranker(model):
    return MatryoshkaReranker(model, byte_tokenizer(), max_passage_tokens=48)


def plain_yes_logits(reranker, model, docs=DOCS, query=QUERY):
    logits = []
    with torch.no_grad():
        for doc in docs:
            ids = torch.tensor([reranker.encode(query, doc).ids])
            logits.append(model(ids).logits[0, -1, reranker.yes_token_id].item())
    return np.array(logits)


def test_full_model_equals_the_lm_yes_logit(model, reranker):
    scores = reranker.score(QUERY, DOCS)
    assert scores.dtype == np.float32 and scores.shape == (4,)
    np.testing.assert_allclose(scores, plain_yes_logits(reranker, model), atol=1e-5, rtol=0)


def test_bos_tokenizer_keeps_equality(model):
    reranker = MatryoshkaReranker(model, byte_tokenizer(bos=True))
    pair = reranker.encode(QUERY, DOCS[0])
    assert pair.ids[0] == 257  # <s> first, then the template
    np.testing.assert_allclose(reranker.score(QUERY, DOCS), plain_yes_logits(reranker, model), atol=1e-5, rtol=0)


def test_passage_span_and_truncation(reranker):
    pair = reranker.encode(QUERY, "x" * 100)
    tokenizer = reranker.tokenizer
    assert pair.passage_len == 48
    assert tokenizer.decode(pair.ids[pair.passage_start:pair.passage_start + pair.passage_len]) == " " + "x" * 47
    text = tokenizer.decode(pair.ids)
    assert text.startswith(f"A: {QUERY}\nB: x")
    assert text.endswith("\nPredict whether passage B contains an answer to query A.")
    assert reranker.encode(QUERY, "x" * 100, config="lengths=1:10").passage_len == 10


@pytest.mark.parametrize("depth", [1, 3, 5])
def test_exit_equals_a_truncated_model(model, reranker, depth):
    short = truncated(model, depth)
    expected = plain_yes_logits(reranker, short)  # final norm + LM head row == head at init
    np.testing.assert_allclose(reranker.score(QUERY, DOCS, config=f"depth={depth}"), expected, atol=1e-5, rtol=0)


def test_several_exits_in_one_pass_and_no_deeper_layer_runs(model, reranker):
    ran = []
    hooks = [layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i + 1)) for i, layer in enumerate(model.model.layers)]
    try:
        table = reranker.score_exits(QUERY, DOCS, exits=[4, 2], batch_tokens=10_000)
    finally:
        for hook in hooks:
            hook.remove()
    assert sorted(set(ran)) == [1, 2, 3, 4] and len(ran) == 4  # one batch, layers 5..6 never run
    assert list(table) == [2, 4]
    for depth, scores in table.items():
        np.testing.assert_allclose(scores, plain_yes_logits(reranker, truncated(model, depth)), atol=1e-5, rtol=0)
    both = reranker.score(QUERY, DOCS, config="exits=2;4")
    assert both.shape == (4, 2)
    np.testing.assert_allclose(both[:, 1], table[4], atol=1e-6)


def test_heads_are_keyed_by_layer_number(reranker, model):
    assert list(reranker.heads) == [str(n) for n in range(1, 7)]
    torch.testing.assert_close(reranker.heads["6"].weight[0], model.lm_head.weight[reranker.yes_token_id])
    # A head changed for layer 3 changes the layer-3 exit only.
    edited = copy.copy(reranker)
    edited.heads = copy.deepcopy(reranker.heads)
    with torch.no_grad():
        edited.heads["3"].bias.fill_(1.0)
    np.testing.assert_allclose(edited.score(QUERY, DOCS, config="depth=3"),
                               reranker.score(QUERY, DOCS, config="depth=3") + 1.0, atol=1e-5)
    np.testing.assert_allclose(edited.score(QUERY, DOCS, config="depth=4"),
                               reranker.score(QUERY, DOCS, config="depth=4"), atol=1e-6)


def test_compression_off_equals_the_plain_model(model, reranker):
    expected = plain_yes_logits(reranker, model)
    np.testing.assert_allclose(reranker.score(QUERY, DOCS, config="compress=2:1.0"), expected, atol=1e-5, rtol=0)


def test_compression_changes_scores(reranker):
    full = reranker.score(QUERY, DOCS, config="depth=5")
    light = reranker.score(QUERY, DOCS, config="depth=5,compress=2:0.5")
    assert not np.allclose(full, light, atol=1e-4)


class Recording(MatryoshkaReranker):
    """Records the passage lengths and widths each layer runs on."""

    def run_layer(self, layer, hidden, state):
        self.seen[layer] = (state.layouts[0].length, state.factors[0])
        return super().run_layer(layer, hidden, state)


@pytest.mark.parametrize("spec, after", [("compress=2:0.5;4:0.25", {3: (24, 2), 5: (12, 2)}),
                                          ("compress=1:0.3", {2: (14, 4)}),
                                          ("lengths=3:17;5:5", {3: (17, 3), 5: (5, 4)})])
def test_compression_hits_the_exact_requested_length(model, spec, after):
    recorder = Recording(model, byte_tokenizer(), max_passage_tokens=48)
    recorder.seen = {}
    recorder.score(QUERY, ["y" * 200], config=spec)
    assert recorder.seen[1] == (48, 1)
    for layer, (length, factor) in after.items():
        assert recorder.seen[layer] == (length, factor)
        assert recorder.seen[layer - 1][0] > length  # the merge happened right after layer - 1


def test_padding_gives_the_same_scores_as_one_at_a_time(reranker):
    config = "depth=5,compress=1:0.5;3:0.25"
    batched = reranker.score(QUERY, DOCS, config=config, batch_tokens=10_000)
    single = np.array([reranker.score(QUERY, [doc], config=config)[0] for doc in DOCS])
    np.testing.assert_allclose(batched, single, atol=1e-5, rtol=0)


def test_eager_reference_gives_the_same_scores(model, reranker):
    eager_model = copy.deepcopy(model)
    eager_model.config._attn_implementation = "eager"
    reference = MatryoshkaReranker(eager_model, byte_tokenizer(), max_passage_tokens=48, importance="eager")
    for config in ("depth=5,compress=2:0.5", "compress=1:0.4;4:0.2", None):
        np.testing.assert_allclose(reference.score(QUERY, DOCS, config=config),
                                   reranker.score(QUERY, DOCS, config=config), atol=1e-5, rtol=0)


def test_attention_row_equals_the_layers_attention(model, reranker):
    """The row from q/k projections is the last row of the eager attention matrix, mean over heads."""
    eager_model = copy.deepcopy(model)
    eager_model.config._attn_implementation = "eager"
    ids = torch.tensor([reranker.encode(QUERY, DOCS[0]).ids])
    with torch.no_grad():
        out = eager_model(ids, output_attentions=True, output_hidden_states=True)
        layout = RowLayout(0, 0, ids.shape[1])
        state = batch_state(reranker.decoder, out.hidden_states[2], torch.arange(ids.shape[1])[None], [layout])
        row = attention_row(reranker.decoder, 3, out.hidden_states[2], state)
    np.testing.assert_allclose(row[0], out.attentions[2][0, :, -1].mean(0).numpy(), atol=1e-6)


def test_multiple_queries_and_rank(reranker):
    queries = [QUERY, "dogs", QUERY, "cats"]
    scores = reranker.score(queries, DOCS)
    for i, (query, doc) in enumerate(zip(queries, DOCS, strict=True)):
        assert scores[i] == pytest.approx(reranker.score(query, [doc])[0], abs=1e-5)
    ranked = reranker.rank(QUERY, DOCS, config="depth=4,compress=2:0.5", top_k=2)
    light = reranker.score(QUERY, DOCS, config="depth=4,compress=2:0.5")
    assert [r.score for r in ranked] == pytest.approx(sorted(light, reverse=True)[:2], abs=1e-6)
    assert ranked[0].rank == 1


def test_flops_follow_the_formula(reranker):
    d, m, h, g, e = 32, 64, 4, 2, 8

    def layer(length):
        return 2 * length * d * (2 * h * e + 2 * g * e) + 4 * h * length**2 * e + 6 * length * d * m

    assert reranker.flops(None, 10, 40, 5) == pytest.approx(6 * layer(55) + 2 * d)
    row = 2 * 55 * d * g * e + 2 * d * h * e + 2 * h * 55 * e
    light = 2 * layer(55) + row + 2 * layer(35) + 2 * d
    assert reranker.flops("depth=4,compress=2:0.5", 10, 40, 5) == pytest.approx(light)
    assert reranker.flops("depth=4,compress=2:0.5", 10, 4000, 5) == reranker.flops("depth=4,compress=2:0.5", 10, 48, 5)


@pytest.mark.parametrize("config, message", [("depth=7", "out of range"), ("compress=6:0.5", "at or after the exit"),
                                             ("depth=2,compress=3:0.5", "at or after the exit")])
def test_bad_configs(reranker, config, message):
    with pytest.raises(ConfigError, match=message):
        reranker.score(QUERY, DOCS, config=config)


def test_bad_inputs(reranker, model):
    with pytest.raises(RerankInputError):
        reranker.score(QUERY, [])
    with pytest.raises(RerankInputError):
        reranker.score("", DOCS)
    with pytest.raises(ConfigError, match="attn_implementation='eager'"):
        MatryoshkaReranker(model, byte_tokenizer(), importance="eager")
    with pytest.raises(ConfigError, match="importance"):
        MatryoshkaReranker(model, byte_tokenizer(), importance="full")
    with pytest.raises(ConfigError, match="exactly once"):
        MatryoshkaReranker(model, byte_tokenizer(), template="{passage} only")
    with pytest.raises(ConfigError, match="positive integer"):
        MatryoshkaReranker(model, byte_tokenizer(), max_passage_tokens=0)
    with pytest.raises(ConfigError, match="not a Llama-family causal LM"):
        MatryoshkaReranker(model.model, byte_tokenizer())
    with pytest.raises(ConfigError, match="batch_tokens"):
        reranker.score(QUERY, DOCS, batch_tokens=0)


@pytest.mark.slow
def test_smollm2_full_score_is_the_yes_logit():
    """Real SmolLM2-135M: the full model's score is its own "Yes" logit; light scores differ but run."""
    from nestrank.models.backbone import preset_path

    try:
        preset_path("smollm2-135m")
    except ConfigError as exc:
        pytest.skip(f"SmolLM2 preset not installed: {exc}")
    reranker = MatryoshkaReranker.from_pretrained("smollm2-135m", dtype="float32", device="cpu")
    assert reranker.tokenizer.convert_ids_to_tokens(reranker.yes_token_id) == "Yes"
    docs = ["Paris is the capital and largest city of France.", "Bananas are rich in potassium."]
    scores = reranker.score("what is the capital of france", docs)
    np.testing.assert_allclose(scores, plain_yes_logits(reranker, reranker.model, docs, "what is the capital of france"),
                               atol=1e-4, rtol=0)
    light = reranker.score("what is the capital of france", docs, config="depth=15,compress=8:0.5")
    assert light.shape == (2,) and np.isfinite(light).all()


def test_bfloat16_model_runs_every_path(model, reranker):
    """No float32-only assumptions: masks, merges and heads follow the model's dtype."""
    half = MatryoshkaReranker(copy.deepcopy(model).to(torch.bfloat16), byte_tokenizer(), max_passage_tokens=48)
    assert half.heads["6"].weight.dtype == torch.bfloat16
    for config in (None, "depth=5,compress=1:0.5;3:0.25"):
        scores = half.score(QUERY, DOCS, config=config, batch_tokens=10_000)
        assert scores.dtype == np.float32
        np.testing.assert_allclose(scores, reranker.score(QUERY, DOCS, config=config), atol=3e-3)
