"""The trainers' fast paths compute the same step as the straightforward one (gradients to 1e-5), on tiny random models.

Fast paths: passes that share their first layers run them once (``forward_passes``), pairs and
texts tokenized once per run, LoRA dropout masks from :class:`FastDropout`. Straightforward:
every structure scored by its own :meth:`MatryoshkaReranker.forward_batch` over freshly
tokenized pairs, the retriever's and pointwise reranker's own public encoding.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from helpers import matryoshka_train_config as reranker_config  # noqa: E402
from helpers import rerank_groups as make_groups  # noqa: E402

from nestrank.models import MatryoshkaConfig  # noqa: E402
from nestrank.models.tiny import byte_tokenizer, tiny_llama  # noqa: E402
from nestrank.train.batches import GroupBatcher  # noqa: E402
from nestrank.train.dropout import FastDropout  # noqa: E402
from nestrank.train.loop import load_groups  # noqa: E402
from nestrank.train.losses import StudentScores, cascaded_self_distillation, info_nce  # noqa: E402
from nestrank.train.losses.group import group_cross_entropy  # noqa: E402
from nestrank.train.matryoshka import MatryoshkaTrainer  # noqa: E402
from nestrank.train.reranker import train_reranker  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LEGACY = {"exits": "sampled", "distill_from": "all", "compensation_teachers": "frozen", "compensation_heads": False}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fast-paths")
    base = root / "tiny"
    tiny_llama().save_pretrained(base)
    byte_tokenizer().save_pretrained(base)
    return base, make_groups(root / "groups.jsonl", count=8, negatives=3)


@pytest.fixture(scope="module")
def distilled(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("distill")
    return train_reranker(reranker_config(setup, out, max_steps=2), progress=False).checkpoint


def one_step(trainer, step: int = 0):
    """The trainer set up as in train(), with its step-``step`` plan and first micro-batch."""
    module, params = trainer.setup("cpu")
    trainer.module = module
    trainer.start_step(step)
    config = trainer.config
    batch = GroupBatcher(load_groups(config), config.train.batch_size, config.data.group_size,
                         config.train.seed).batch(0, 0)
    return params, batch


def grads(params, loss) -> list:
    for p in params:
        p.grad = None
    loss.backward()
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]


def naive_matryoshka_loss(trainer, batch):
    """Every structure of the step's plan scored by its own forward_batch over freshly tokenized pairs."""
    reranker, plan, config = trainer.reranker, trainer.plan, trainer.config
    size = config.data.group_size
    queries = [q for q in batch.queries for _ in range(size)]
    pairs = [reranker.encode(q, d) for q, d in zip(queries, batch.passages, strict=True)]
    ids, layouts, lengths = reranker.batch_inputs(pairs)

    def score(depth: int, compress=()) -> torch.Tensor:
        return reranker.forward_batch(ids, layouts, MatryoshkaConfig((depth,), compress), (depth,), lengths)[:, 0] \
            .view(len(batch.queries), size)

    full = {}
    if plan.frozen:
        compensation = reranker.compensation
        reranker.set_compensation(None)
        with torch.no_grad():
            full = {d: score(d) for d in plan.frozen}
        reranker.set_compensation(compensation)
    full.update({d: score(d) for d in plan.full})
    from nestrank.models import parse_config

    widths = {(w, d): score(d, parse_config(f"compress={w}").compress) for w, exits in plan.widths for d in exits}
    students = [StudentScores(s.depth, widths[(s.compress, s.depth)] if s.compress else full[s.depth], s.name,
                              full_width=not s.compress) for s in plan.students]
    r = config.reranker
    return cascaded_self_distillation({t: full[t] for t in trainer.teachers}, students,
                                      temperature=config.train.temperature, distill_temperature=r.distill_temperature,
                                      distill=r.stage != "contrastive", distill_from=r.distill_from).total


@pytest.mark.parametrize(("stage", "options"), [
    ("contrastive", LEGACY), ("distill", LEGACY), ("compensate", LEGACY),
    ("contrastive", {}), ("distill", {}), ("compensate", {}),
])
def test_matryoshka_step_gradients_match_the_straightforward_path(setup, distilled, tmp_path, stage, options):
    init = str(distilled) if stage == "compensate" else ""
    config = reranker_config(setup, tmp_path, {"stage": stage, "init": init, **options})
    found_fork = False
    for step in range(3):  # several plans: widths that fork at different layers, full-width students
        trainer = MatryoshkaTrainer(config, progress=False)
        params, batch = one_step(trainer, step)
        found_fork |= bool(trainer.plan.widths)
        fast = grads(params, trainer.batch_loss(batch)[0])
        naive = grads(params, naive_matryoshka_loss(trainer, batch))
        assert any(float(g.abs().max()) > 0 for g in fast)
        for a, b in zip(fast, naive, strict=True):
            assert float((a - b).abs().max()) <= 1e-5
    assert found_fork


def test_retriever_step_gradients_match_the_straightforward_path(tmp_path):
    from helpers import retrieval_groups as retriever_groups
    from helpers import retriever_train_config as retriever_config
    from helpers import save_word_llama as make_tiny_llama

    from nestrank.train.retriever import RetrieverTrainer

    setup = make_tiny_llama(tmp_path / "tiny"), retriever_groups(tmp_path / "groups.jsonl")
    trainer = RetrieverTrainer(retriever_config(setup, tmp_path / "out", temperature=0.05), progress=False)
    params, batch = one_step(trainer)
    for p in params:
        p.grad = None
    trainer.micro_step(batch, True)  # tokens cached, fast dropout (p = 0 here)
    trainer.micro_step(batch, True)  # the second time from the cache: gradients accumulate twice the same
    fast = [p.grad.clone() / 2 for p in params]
    encoder, c = trainer.encoder, trainer.encoder.config
    q = encoder.embed_token_ids(encoder.tokenize([c.query_prefix + x for x in batch.queries], c.query_max_length))
    p = encoder.embed_token_ids(encoder.tokenize([c.passage_prefix + d.full_text for d in batch.passages],
                                                 c.passage_max_length))
    naive = grads(params, info_nce(q, p, trainer.config.data.group_size, 0.05))
    for a, b in zip(fast, naive, strict=True):
        assert float((a - b).abs().max()) <= 1e-5


def test_pointwise_step_gradients_match_the_straightforward_path(tmp_path):
    from helpers import pointwise_train_config as pointwise_config
    from transformers import LlamaConfig, LlamaForCausalLM

    from nestrank.train.config import config_from_dict
    from nestrank.train.pointwise import PointwiseTrainer

    tokenizer = byte_tokenizer()
    tokenizer.add_special_tokens({"eos_token": "</s>"})
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
                     ).save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    data = pointwise_config((tmp_path / "tiny", make_groups(tmp_path / "groups.jsonl")), tmp_path / "out").to_dict()
    data["lora"]["dropout"] = 0.0
    trainer = PointwiseTrainer(config_from_dict(data), progress=False)
    params, batch = one_step(trainer)
    trainer.batch_loss(batch)  # tokenizes the pairs into the cache
    fast = grads(params, trainer.batch_loss(batch)[0])
    reranker, size = trainer.reranker, trainer.config.data.group_size
    ids, mask = reranker.pad(reranker.encode([q for q in batch.queries for _ in range(size)], batch.passages))
    scores = reranker.forward_batch(ids, mask).view(len(batch.queries), size)
    naive = grads(params, group_cross_entropy(scores, trainer.config.train.temperature))
    for a, b in zip(fast, naive, strict=True):
        assert float((a - b).abs().max()) <= 1e-5


def test_fast_dropout_is_torch_dropout_in_distribution():
    drop = FastDropout(0.25).train()
    x = torch.ones(400, 500, requires_grad=True)
    torch.manual_seed(3)
    y = drop(x)
    kept = y.detach() != 0
    assert abs(float(kept.float().mean()) - 0.75) < 0.01  # 200,000 draws: 4.6 standard deviations
    assert torch.allclose(y.detach()[kept], torch.full_like(y.detach()[kept], 1 / 0.75))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient is the scaled mask
    torch.manual_seed(3)
    assert torch.equal(drop(x), y)  # the trainer's per-step seed makes masks reproducible
    assert not torch.equal(drop(x), y)
    assert torch.equal(drop.eval()(x), x) and torch.equal(FastDropout(0.0).train()(x), x)
    rows = FastDropout(0.5).train()(torch.ones(2, 10_000))
    assert not torch.equal(rows[0], rows[1]) and np.isclose(float((rows != 0).float().mean()), 0.5, atol=0.02)
