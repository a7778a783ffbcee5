"""Dynamic batching: pairs of all concurrent requests packed into token-budget batches, one worker per model.

A request becomes a :class:`Job`: its items (one per document, with a token length) and a
key (the model's configuration, e.g. a Matryoshka depth/width), since only items of one key
can share a forward pass. :meth:`Scheduler.submit` queues the items, or refuses the job with
:class:`Overloaded` when the model's queued tokens would pass ``max_queued_tokens``
(admission counts tokens, not requests, so one huge request cannot slip through).

The worker thread repeatedly takes the key whose oldest item waited longest, drops items whose
job was cancelled (client gone) or whose deadline passed, packs the rest with
:func:`nestrank.models.batching.token_budget_batches` (sorted by length, padded size within
``max_batch_tokens``) and runs the batch that holds the oldest item; the other items stay
queued and are packed again with whatever arrives meanwhile. The model never runs on the
event loop; results are scattered back into each job, whose future completes when its last
item is done. :meth:`Scheduler.close` drains the queue before the worker exits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nestrank.errors import NestrankError
from nestrank.models.batching import token_budget_batches

#: ``runner(key, payloads) -> array`` with one row per payload, run on the worker thread.
Runner = Callable[[Hashable, list[Any]], np.ndarray]


class Overloaded(NestrankError):
    """The model's queue holds too many tokens; ``retry_after`` seconds is the estimated wait."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Dropped(NestrankError):
    """A job's items were dropped before they ran: ``reason`` is ``deadline``, ``disconnected`` or ``shutdown``."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"request dropped ({reason})")
        self.reason = reason


@dataclass(eq=False)
class Job:
    """One request's work for one model: ``payloads[i]`` costs ``lengths[i]`` tokens; all share ``key``."""

    key: Hashable
    payloads: Sequence[Any]
    lengths: Sequence[int]
    deadline: float  # time.monotonic() after which queued items are dropped
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    submitted: float = 0.0
    started: float | None = None  # when its first batch began
    inference_s: float = 0.0  # seconds of the batches that held its items
    _rows: list[Any] = field(default_factory=list)
    _remaining: int = 0

    def __post_init__(self) -> None:
        if len(self.payloads) != len(self.lengths) or not self.payloads:
            raise ValueError("a job needs one length per payload and at least one payload")
        self._rows = [None] * len(self.payloads)
        self._remaining = len(self.payloads)

    @property
    def tokens(self) -> int:
        """Tokens of all its items (what admission counts)."""
        return int(sum(self.lengths))


@dataclass(eq=False)
class _Item:
    job: Job
    index: int
    tokens: int


@dataclass
class BatchStats:
    """What one forward batch was: passed to the scheduler's ``on_batch`` observer."""

    key: Hashable
    items: int
    padded_tokens: int
    seconds: float


class Scheduler:
    """Token-budget dynamic batching for one model, with a single inference worker thread.

    Args:
        name: the model's name (thread name, messages).
        runner: ``runner(key, payloads)`` runs one batch and returns one row per payload.
        max_batch_tokens / max_batch_size: limits of one batch (padded tokens, items).
        max_queued_tokens: admission bound on the tokens waiting.
        on_batch: called on the worker after each batch (metrics, latency model).
        on_drop: called with ``(reason, items)`` when queued items are dropped.
    """

    def __init__(self, name: str, runner: Runner, *, max_batch_tokens: int, max_batch_size: int | None = None,
                 max_queued_tokens: int, on_batch: Callable[[BatchStats], None] | None = None,
                 on_drop: Callable[[str, int], None] | None = None) -> None:
        self.name = name
        self.runner = runner
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.max_queued_tokens = max_queued_tokens
        self.on_batch = on_batch
        self.on_drop = on_drop
        self._pending: dict[Hashable, list[_Item]] = {}
        self._cond = threading.Condition()
        self._queued_tokens = 0
        self._closing = False
        self._tokens_per_s: float | None = None  # running throughput, for Retry-After
        self._thread = threading.Thread(target=self._work, name=f"nestrank-infer-{name}", daemon=True)
        self._thread.start()

    @property
    def queued_tokens(self) -> int:
        """Tokens waiting (not yet in a running batch)."""
        return self._queued_tokens

    def estimated_wait_s(self, extra_tokens: int = 0) -> float:
        """Seconds until the queued tokens (plus ``extra_tokens``) would be done at the running throughput."""
        rate = self._tokens_per_s
        return 0.0 if rate is None else (self._queued_tokens + extra_tokens) / rate

    def submit(self, job: Job) -> None:
        """Queue ``job``'s items.

        Raises:
            Overloaded: the queue would pass ``max_queued_tokens`` (a job bigger than the whole
                bound is refused too, with no useful retry time).
            Dropped: the scheduler is shutting down.
        """
        items = [_Item(job, i, int(n)) for i, n in enumerate(job.lengths)]
        tokens = sum(item.tokens for item in items)
        with self._cond:
            if self._closing:
                raise Dropped("shutdown")
            if self._queued_tokens + tokens > self.max_queued_tokens:
                wait = max(1.0, self.estimated_wait_s(tokens))
                raise Overloaded(f"model {self.name!r} is overloaded: {self._queued_tokens} tokens queued, this "
                                 f"request needs {tokens} (bound {self.max_queued_tokens})", retry_after=wait)
            job.submitted = time.monotonic()
            self._pending.setdefault(job.key, []).extend(items)
            self._queued_tokens += tokens
            self._cond.notify()

    def cancel(self, job: Job, reason: str) -> None:
        """Drop ``job``'s queued items now (client gone, deadline passed); its future gets :class:`Dropped`.

        A job whose remaining items are all in the running batch is left to finish: dropping
        them would save nothing.
        """
        with self._cond:
            dropped = self._remove(job)
        if dropped and self.on_drop is not None:
            self.on_drop(reason, dropped)
        if dropped or job.started is None:
            _finish(job, Dropped(reason))

    async def run(self, job: Job, disconnected: Callable[[], Awaitable[bool]] | None = None,
                  poll_s: float = 0.05) -> np.ndarray:
        """Submit ``job`` and await its rows, stacked in input order.

        While waiting, ``disconnected()`` is polled every ``poll_s`` seconds; when it turns true,
        or the deadline passes, the job's queued items are dropped and :class:`Dropped` raised.
        If the awaiting task is cancelled, the job's queued items are dropped too.
        """
        self.submit(job)
        waiter = asyncio.wrap_future(job.future)
        try:
            while True:
                left = job.deadline - time.monotonic()
                if left <= 0:
                    self.cancel(job, "deadline")
                    return await waiter
                done, _ = await asyncio.wait({waiter}, timeout=min(poll_s, left))
                if done:
                    return waiter.result()
                if disconnected is not None and await disconnected():
                    self.cancel(job, "disconnected")
                    return await waiter
        except asyncio.CancelledError:  # the handler was cancelled (server shutting down, client gone)
            self.cancel(job, "disconnected")
            raise

    def close(self, timeout: float | None = None) -> bool:
        """Stop taking jobs, finish the queued ones, stop the worker; ``False`` if it outlived ``timeout``."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # ----------------------------------------------------------------- worker

    def _remove(self, job: Job) -> int:
        """Drop ``job``'s queued items (caller holds the lock); returns how many."""
        removed = 0
        for key in list(self._pending):
            kept = [item for item in self._pending[key] if item.job is not job]
            removed += len(self._pending[key]) - len(kept)
            self._queued_tokens -= sum(item.tokens for item in self._pending[key] if item.job is job)
            if kept:
                self._pending[key] = kept
            else:
                del self._pending[key]
        return removed

    def _next_batch(self) -> tuple[Hashable, list[_Item]] | None:
        """The next batch to run, or ``None`` once closing with nothing left (caller holds the lock)."""
        while True:
            while not self._pending and not self._closing:
                self._cond.wait()
            if not self._pending:
                return None
            key = min(self._pending, key=lambda k: self._pending[k][0].job.submitted)
            now = time.monotonic()
            live, expired = [], []
            for item in self._pending[key]:
                if item.job.future.done():
                    self._queued_tokens -= item.tokens
                elif now > item.job.deadline:
                    expired.append(item)
                else:
                    live.append(item)
            for job in {item.job for item in expired}:
                dropped = self._remove(job)
                if self.on_drop is not None:
                    self.on_drop("deadline", dropped)
                _finish(job, Dropped("deadline"))
            if not live:
                self._pending.pop(key, None)
                continue
            batches = token_budget_batches([item.tokens for item in live], self.max_batch_tokens, self.max_batch_size)
            chosen = next(batch for batch in batches if 0 in batch)
            taken = set(chosen)
            rest = [item for i, item in enumerate(live) if i not in taken]
            if rest:
                self._pending[key] = rest
            else:
                del self._pending[key]
            batch = [live[i] for i in sorted(chosen)]
            self._queued_tokens -= sum(item.tokens for item in batch)
            return key, batch

    def _work(self) -> None:
        while True:
            with self._cond:
                task = self._next_batch()
            if task is None:
                return
            key, batch = task
            start = time.monotonic()
            for item in batch:
                if item.job.started is None:
                    item.job.started = start
            try:
                rows = self.runner(key, [item.job.payloads[item.index] for item in batch])
            except Exception as exc:  # a failing model fails its batch's requests, never the worker
                for job in {item.job for item in batch}:
                    with self._cond:
                        self._remove(job)
                    _finish(job, exc)
                continue
            seconds = time.monotonic() - start
            padded = max(item.tokens for item in batch) * len(batch)
            rate = padded / max(seconds, 1e-6)
            self._tokens_per_s = rate if self._tokens_per_s is None else 0.8 * self._tokens_per_s + 0.2 * rate
            for job in {item.job for item in batch}:
                job.inference_s += seconds
            for item, row in zip(batch, rows, strict=True):
                _deliver(item, row)
            if self.on_batch is not None:
                self.on_batch(BatchStats(key, len(batch), padded, seconds))


def _deliver(item: _Item, row: Any) -> None:
    job = item.job
    if job.future.done():
        return
    job._rows[item.index] = row
    job._remaining -= 1
    if job._remaining == 0:
        _finish(job, np.stack(job._rows))


def _finish(job: Job, outcome: Any) -> None:
    """Complete ``job``'s future once with a result array or an exception (later calls do nothing)."""
    try:
        if isinstance(outcome, BaseException):
            job.future.set_exception(outcome)
        else:
            job.future.set_result(outcome)
    except concurrent.futures.InvalidStateError:
        pass
