"""Factorized compensation (V-LoRA per layer + H-LoRA per factor) in the Matryoshka engine."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

from helpers import QUERY  # noqa: E402

from nestrank.errors import ConfigError  # noqa: E402
from nestrank.models.matryoshka import MatryoshkaReranker  # noqa: E402
from nestrank.models.matryoshka.compensation import CompensationSettings, FactorizedCompensation  # noqa: E402
from nestrank.models.tiny import byte_tokenizer, tiny_llama  # noqa: E402

# Passages of 40, 48 and 56 bytes (one token per byte): with compress=2:0.5;4:0.125 every row
# is merged with k=2 after layer 2 and k=4 after layer 4, so one merged model matches all rows.
DOCS = ["a" * 8 + " cat sat on the mat, all day" + "." * 4, "the dog barked at the moon over and over " + "x" * 7,
        "rain falls softly on the roofs of the old town square, yes"[:56]]
CONFIG = "depth=6,compress=2:0.5;4:0.125"
FACTOR_AT = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4}  # the factor in effect while each layer runs


def randomised(compensation: FactorizedCompensation, seed: int = 0) -> FactorizedCompensation:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in compensation.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return compensation


@pytest.fixture()
def setup():
    model = tiny_llama()
    reranker = MatryoshkaReranker(model, byte_tokenizer())
    settings = CompensationSettings(r=4, alpha=8, factors=(2, 4))
    return model, reranker, FactorizedCompensation(model.model.layers, settings)


def test_untrained_compensation_changes_nothing(setup):
    _, reranker, compensation = setup
    plain = reranker.score(QUERY, DOCS, config=CONFIG)
    reranker.set_compensation(compensation)
    assert [len(d) for d in DOCS] == [40, 48, 56]
    assert reranker.score(QUERY, DOCS, config=CONFIG) == pytest.approx(plain, abs=1e-6)


def test_per_layer_composition_equals_explicitly_merged_weights(setup):
    model, reranker, compensation = setup
    randomised(compensation)
    reranker.set_compensation(compensation)
    composed = reranker.score(QUERY, DOCS, config=CONFIG)

    def merged_scores(factor_at: dict[int, int]):
        merged_model = copy.deepcopy(model)
        with torch.no_grad():
            for layer, k in factor_at.items():
                modules = dict(merged_model.model.layers[layer - 1].named_modules())
                for name in compensation.settings.targets:
                    linear = modules[("self_attn." if name in ("q_proj", "v_proj", "o_proj") else "mlp.") + name]
                    linear.weight += compensation.merged_delta(layer, name, k)
        return MatryoshkaReranker(merged_model, byte_tokenizer()).score(QUERY, DOCS, config=CONFIG)

    assert composed == pytest.approx(merged_scores(FACTOR_AT), abs=1e-5)
    # It is really per layer: one merge for the whole model (the last factor everywhere) differs.
    assert composed != pytest.approx(merged_scores(dict.fromkeys(FACTOR_AT, 4)), abs=1e-3)


def test_rows_at_different_factors_in_one_batch(setup):
    _, reranker, compensation = setup
    reranker.set_compensation(randomised(compensation, seed=1))
    docs = [DOCS[2], "cat"]  # the 3-token passage reaches the 0.5 target with k=2, then stops merging
    together = reranker.score(QUERY, docs, config=CONFIG)
    alone = [reranker.score(QUERY, [doc], config=CONFIG)[0] for doc in docs]
    assert together == pytest.approx(alone, abs=1e-5)


def test_detach_and_the_plain_forward_are_untouched(setup):
    model, reranker, compensation = setup
    ids = torch.tensor([[5, 6, 7, 8]])
    before = model(ids).logits
    reranker.set_compensation(randomised(compensation))
    assert torch.allclose(model(ids).logits, before)  # hooks add nothing outside the engine's layer context
    with_comp = reranker.score(QUERY, DOCS[:1], config=CONFIG)
    reranker.set_compensation(None)
    plain = reranker.score(QUERY, DOCS[:1], config=CONFIG)
    assert with_comp != pytest.approx(plain, abs=1e-4)
    assert MatryoshkaReranker(tiny_llama(), byte_tokenizer()).score(QUERY, DOCS[:1], config=CONFIG) == \
        pytest.approx(plain, abs=1e-6)


def test_gradients_reach_the_parts_in_use(setup):
    _, reranker, compensation = setup
    randomised(compensation)
    reranker.set_compensation(compensation)
    pairs = [reranker.encode(QUERY, doc, CONFIG) for doc in DOCS[:1]]
    from nestrank.models.matryoshka.token_merge import RowLayout

    ids = torch.tensor([pairs[0].ids])
    layout = [RowLayout(pairs[0].passage_start, pairs[0].passage_len, len(pairs[0].ids))]
    from nestrank.models.matryoshka.config import parse_config

    config = parse_config("depth=4,compress=2:0.5")
    reranker.forward_batch(ids, layout, config, (4,), [pairs[0].passage_len]).sum().backward()
    grads = {name: p.grad is not None and p.grad.abs().sum().item() > 0 for name, p in compensation.named_parameters()}
    assert grads["v.1_q_proj.lora_B"] and grads["v.4_down_proj.lora_B"]
    assert grads["h.2_3_q_proj.lora_B"] and not grads["h.2_2_q_proj.lora_B"]  # k=2 applies from layer 3
    assert not grads["h.4_3_q_proj.lora_B"] and not grads["v.5_q_proj.lora_B"]  # factor 4 unused; layer 5 never runs


def test_factor_resolution_and_bad_settings(setup):
    model, _, compensation = setup
    assert [compensation.resolve_factor(k) for k in (1, 2, 3, 4, 7)] == [None, 2, 4, 4, 4]
    with pytest.raises(ConfigError, match="no linear module named nope"):
        FactorizedCompensation(model.model.layers, CompensationSettings(targets=("nope",)))
    with pytest.raises(ConfigError, match="layer 9 does not exist"):
        FactorizedCompensation(model.model.layers, CompensationSettings(layers=(9,)))
    with pytest.raises(ConfigError, match="factors must be integers >= 2"):
        CompensationSettings(factors=(1, 2))
    assert CompensationSettings.from_dict(CompensationSettings(r=2).to_dict()) == CompensationSettings(r=2)
    with pytest.raises(ConfigError, match="unknown keys"):
        CompensationSettings.from_dict({"rank": 3})
