"""GradCache: a large contrastive batch in small memory (Gao et al. 2021).

The contrastive loss couples every query with every passage of the batch, so the batch
cannot simply be split into micro-batches. GradCache computes it exactly in three passes:

1. embed all queries and passages chunk by chunk *without* autograd graphs;
2. compute the loss on the detached embeddings and its gradient w.r.t. each embedding;
3. re-run every chunk *with* autograd and backpropagate the cached embedding gradients
   through it (``(embedding * cached_grad).sum().backward()``), one chunk at a time.

Peak activation memory is that of one chunk, and the parameter gradients equal those of
the full-batch computation. Each chunk's random state (dropout) is recorded in pass 1 and
replayed in pass 3, so both passes see identical dropout masks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from nestrank.train.losses.contrastive import gather_with_grad, info_nce, world_size

if TYPE_CHECKING:
    import torch

Inputs = Sequence[Any]  # one item per sequence, e.g. token-id rows
Embed = Callable[[Inputs], "torch.Tensor"]
Backward = Callable[["torch.Tensor"], None]
SyncContext = Callable[[bool], contextlib.AbstractContextManager]


def split_inputs(inputs: Inputs, chunk_size: int) -> list[Inputs]:
    """Cut inputs (one item per sequence) into chunks of ``chunk_size`` items (``0``: one chunk)."""
    size = len(inputs) if chunk_size <= 0 else chunk_size
    return [inputs[start:start + size] for start in range(0, len(inputs), size)]


class _RandomState:
    """The CPU (and current CUDA device) random state at one moment, to replay later."""

    def __init__(self) -> None:
        import torch

        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block with this random state; the state from before the block is restored after it."""
        import torch

        devices = [torch.cuda.current_device()] if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda)
            yield


def contrastive_backward(
    embed: Embed,
    queries: Inputs,
    passages: Inputs,
    group_size: int,
    temperature: float,
    *,
    chunk_size: int = 0,
    loss_scale: float = 1.0,
    backward: Backward | None = None,
    sync: SyncContext | None = None,
) -> float:
    """Compute the InfoNCE loss of one contrastive batch and backpropagate it into the model.

    Args:
        embed: maps a sequence of inputs (e.g. token-id rows) to an embedding matrix, one
            row per input (with autograd when enabled).
        queries: this process's queries, ``B`` items.
        passages: this process's passages, ``B * group_size`` items (positive first in each
            group).
        group_size: passages per query.
        temperature: softmax temperature of :func:`info_nce`.
        chunk_size: GradCache chunk in sequences (``0``: one ordinary forward/backward).
        loss_scale: factor on the loss before backward (``1 / accumulation_steps``); the world
            size factor needed under DDP is applied here.
        backward: calls ``.backward()`` on a scalar (e.g. ``accelerator.backward``).
        sync: ``sync(is_last)`` returns the context for a forward + backward; pass DDP's ``no_sync``
            for ``is_last=False`` so gradients are all-reduced only once (DDP decides at forward
            time, so the forward runs inside the context too).

    Returns:
        The (unscaled) loss of the global batch.
    """
    import torch

    backward = backward or (lambda loss: loss.backward())
    sync = sync or (lambda is_last: contextlib.nullcontext())
    scale = loss_scale * world_size()
    if chunk_size <= 0:
        with sync(True):
            q = gather_with_grad(embed(queries))
            p = gather_with_grad(embed(passages))
            loss = info_nce(q, p, group_size, temperature)
            backward(loss * scale)
        return float(loss.detach())

    chunks = [("q", c) for c in split_inputs(queries, chunk_size)] + [("p", c) for c in split_inputs(passages, chunk_size)]
    states, reps = [], []
    with torch.no_grad():
        for _, chunk in chunks:
            states.append(_RandomState())
            reps.append(embed(chunk))
    n_q = sum(1 for kind, _ in chunks if kind == "q")
    q_local = torch.cat(reps[:n_q]).detach().requires_grad_()
    p_local = torch.cat(reps[n_q:]).detach().requires_grad_()
    loss = info_nce(gather_with_grad(q_local), gather_with_grad(p_local), group_size, temperature)
    (loss * scale).backward()
    grads = list(q_local.grad.split([r.shape[0] for r in reps[:n_q]])) + \
        list(p_local.grad.split([r.shape[0] for r in reps[n_q:]]))
    for index, ((_, chunk), state, grad) in enumerate(zip(chunks, states, grads, strict=True)):
        with sync(index == len(chunks) - 1):
            with state.replay():
                rep = embed(chunk)
            backward(torch.dot(rep.flatten().float(), grad.flatten().float()))
    return float(loss.detach())
