"""InfoNCE loss and GradCache: hand-computed values and gradient equality."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from nestrank.train.gradcache import contrastive_backward, split_inputs  # noqa: E402
from nestrank.train.losses import gather_with_grad, info_nce  # noqa: E402


def test_info_nce_matches_hand_computation():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, 0.6]])  # group size 2, positives at rows 0 and 2
    t = 0.5
    expected = 0.0
    for i, pos in ((0, 0), (1, 2)):
        logits = [sum(a * b for a, b in zip(q[i].tolist(), row, strict=True)) / t for row in p.tolist()]
        expected += -(logits[pos] - math.log(sum(math.exp(x) for x in logits)))
    expected /= 2
    assert info_nce(q, p, group_size=2, temperature=t).item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_rejects_bad_shapes():
    with pytest.raises(ValueError, match="expected 4"):
        info_nce(torch.zeros(2, 3), torch.zeros(3, 3), group_size=2)
    with pytest.raises(ValueError, match="temperature"):
        info_nce(torch.zeros(2, 3), torch.zeros(4, 3), group_size=2, temperature=0)


def test_gather_without_process_group_is_identity():
    x = torch.randn(3, 2)
    assert gather_with_grad(x) is x


def test_split_inputs_covers_all_rows():
    rows = [[i, i + 1] for i in range(5)]
    assert split_inputs(rows, 2) == [rows[:2], rows[2:4], rows[4:]]
    assert split_inputs(rows, 0) == [rows]


class _Tower(torch.nn.Module):
    """Embedding bag + MLP + dropout: enough to check GradCache, including replayed dropout."""

    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(50, 16)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Tanh(), torch.nn.Dropout(dropout),
                                       torch.nn.Linear(16, 8))

    def forward(self, rows):
        pooled = self.emb(torch.tensor(rows)).mean(1)
        return torch.nn.functional.normalize(self.mlp(pooled), dim=-1)


def _batch(rows: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 50, (rows, 6), generator=g).tolist()


@pytest.mark.parametrize("chunk", [1, 3])
def test_gradcache_gradients_equal_full_batch(chunk):
    torch.manual_seed(0)
    model = _Tower(dropout=0.0).double()
    queries, passages = _batch(4, 1), _batch(12, 2)

    def embed(inputs):
        return model(inputs)

    full_loss = contrastive_backward(embed, queries, passages, 3, 0.05, chunk_size=0)
    full = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    cached_loss = contrastive_backward(embed, queries, passages, 3, 0.05, chunk_size=chunk)
    assert cached_loss == pytest.approx(full_loss, abs=1e-10)
    for a, b in zip(full, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
        assert a.abs().sum() > 0


def test_gradcache_replays_dropout_masks():
    """With dropout, pass 3 must see pass 1's masks: the result matches one full pass under the same seeds."""
    model = _Tower(dropout=0.5).double()
    queries, passages = _batch(2, 3), _batch(4, 4)
    torch.manual_seed(7)
    loss_a = contrastive_backward(model, queries, passages, 2, 0.05, chunk_size=2)
    grads_a = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    # Reference: the same chunked forwards with grad, one loss, one backward (same RNG consumption order).
    torch.manual_seed(7)
    reps = [model(c) for c in split_inputs(queries, 2) + split_inputs(passages, 2)]
    loss_b = info_nce(reps[0], torch.cat(reps[1:]), 2, 0.05)
    loss_b.backward()
    assert loss_a == pytest.approx(loss_b.item(), abs=1e-10)
    for a, p in zip(grads_a, model.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad, atol=1e-8, rtol=0)
