"""The dynamic-batching scheduler on its own: packing, keys, drops, admission, drain, failures.

The runner is a plain function (the scheduler is what is tested here); a gate holds the worker
busy where a test needs requests to pile up deterministically.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from nestrank.serve.scheduler import Dropped, Job, Overloaded, Scheduler


class Recorder:
    """A runner that returns each payload's value * 10 and records every batch; optionally waits on a gate."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[tuple[object, list[float]]] = []
        self.gate = gate
        self.running = threading.Event()

    def __call__(self, key, payloads):
        self.running.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        self.batches.append((key, list(payloads)))
        return np.array([[p * 10.0] for p in payloads])


def job(values, key="k", lengths=None, deadline_s=30.0):
    return Job(key, list(values), lengths or [10] * len(values), time.monotonic() + deadline_s)


def scheduler(runner, **kwargs):
    options = {"max_batch_tokens": 100, "max_queued_tokens": 1000, **kwargs}
    return Scheduler("test", runner, **options)


def busy_scheduler(first=None, **kwargs):
    """A scheduler whose worker is held inside a first batch (``first``, default one item) until ``gate`` is set,
    so that the next jobs queue up together; returns ``(gate, runner, sched)``."""
    gate = threading.Event()
    runner = Recorder(gate)
    sched = scheduler(runner, **kwargs)
    sched.submit(first if first is not None else job([0.0]))
    assert runner.running.wait(5)
    return gate, runner, sched


def test_results_come_back_in_input_order_and_batches_respect_the_budget():
    first = job([0.0])
    gate, runner, sched = busy_scheduler(first, max_batch_tokens=40)  # the next jobs queue up together
    jobs = [job([1.0, 2.0, 3.0], lengths=[5, 20, 10]), job([4.0, 5.0], lengths=[10, 10])]
    for j in jobs:
        sched.submit(j)
    gate.set()
    assert first.future.result(5).tolist() == [[0.0]]
    assert jobs[0].future.result(5).tolist() == [[10.0], [20.0], [30.0]]
    assert jobs[1].future.result(5).tolist() == [[40.0], [50.0]]
    assert sched.close(5)
    later = runner.batches[1:]
    assert sorted(v for _, batch in later for v in batch) == [1.0, 2.0, 3.0, 4.0, 5.0]
    lengths = {1.0: 5, 2.0: 20, 3.0: 10, 4.0: 10, 5.0: 10}
    for _, batch in later:  # padded size within the budget
        assert max(lengths[v] for v in batch) * len(batch) <= 40
    assert len(later) < 5  # pairs of the two requests shared batches


def test_items_of_different_keys_never_share_a_batch():
    gate, runner, sched = busy_scheduler(job([0.0], key="a"))
    a, b = job([1.0, 2.0], key="a"), job([3.0, 4.0], key="b")
    sched.submit(a)
    sched.submit(b)
    gate.set()
    a.future.result(5), b.future.result(5)
    sched.close(5)
    for key, batch in runner.batches:
        assert {"a": {0.0, 1.0, 2.0}, "b": {3.0, 4.0}}[key] >= set(batch)


def test_a_cancelled_jobs_items_are_never_computed():
    dropped = []
    gate, runner, sched = busy_scheduler(on_drop=lambda reason, n: dropped.append((reason, n)))
    gone, kept = job([7.0, 8.0]), job([9.0])
    sched.submit(gone)
    sched.submit(kept)
    assert sched.queued_tokens == 30
    sched.cancel(gone, "disconnected")
    assert sched.queued_tokens == 10
    gate.set()
    assert kept.future.result(5).tolist() == [[90.0]]
    with pytest.raises(Dropped, match="disconnected"):
        gone.future.result(5)
    sched.close(5)
    computed = [v for _, batch in runner.batches for v in batch]
    assert 7.0 not in computed and 8.0 not in computed
    assert dropped == [("disconnected", 2)]


def test_items_past_their_deadline_are_dropped_before_batching():
    gate, runner, sched = busy_scheduler()
    late = job([5.0], deadline_s=0.05)
    sched.submit(late)
    time.sleep(0.1)
    gate.set()
    with pytest.raises(Dropped, match="deadline"):
        late.future.result(5)
    sched.close(5)
    assert all(5.0 not in batch for _, batch in runner.batches)


def test_admission_counts_tokens_and_refuses_past_the_bound():
    gate, runner, sched = busy_scheduler(max_queued_tokens=100)
    sched.submit(job([1.0] * 9))  # 90 tokens queued
    with pytest.raises(Overloaded) as caught:
        sched.submit(job([2.0, 2.0]))  # 20 more would pass 100
    assert caught.value.retry_after >= 1.0
    sched.submit(job([3.0]))  # exactly 100 fits
    assert sched.queued_tokens == 100
    gate.set()
    sched.close(5)


def test_close_drains_queued_work_then_refuses_new_jobs():
    gate = threading.Event()
    runner = Recorder(gate)
    sched = scheduler(runner)
    jobs = [job([float(i)]) for i in range(5)]
    for j in jobs:
        sched.submit(j)
    closer = threading.Thread(target=sched.close, args=(10,))
    closer.start()
    time.sleep(0.05)
    with pytest.raises(Dropped, match="shutdown"):
        sched.submit(job([9.0]))
    gate.set()
    closer.join(10)
    assert [j.future.result(1).tolist() for j in jobs] == [[[i * 10.0]] for i in range(5)]


def test_a_failing_batch_fails_its_requests_and_the_worker_survives():
    calls = []

    def runner(key, payloads):
        calls.append(payloads)
        if "bad" in payloads:
            raise RuntimeError("boom")
        return np.ones((len(payloads), 1))

    sched = Scheduler("test", runner, max_batch_tokens=10, max_queued_tokens=1000)
    bad = job(["bad"])
    sched.submit(bad)
    with pytest.raises(RuntimeError, match="boom"):
        bad.future.result(5)
    good = job(["fine"])
    sched.submit(good)
    assert good.future.result(5).tolist() == [[1.0]]
    sched.close(5)


def test_run_drops_the_job_when_the_client_disconnects():
    gate, runner, sched = busy_scheduler()

    async def main():
        calls = 0

        async def disconnected():
            nonlocal calls
            calls += 1
            return calls >= 2

        with pytest.raises(Dropped, match="disconnected"):
            await sched.run(job([4.0, 5.0]), disconnected, poll_s=0.01)

    asyncio.run(main())
    gate.set()
    sched.close(5)
    assert all(4.0 not in batch for _, batch in runner.batches)


def test_a_cancelled_handler_drops_its_queued_items():
    gate, runner, sched = busy_scheduler()

    async def main():
        task = asyncio.create_task(sched.run(job([6.0, 7.0])))
        await asyncio.sleep(0.05)
        assert sched.queued_tokens == 20
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert sched.queued_tokens == 0
    gate.set()
    sched.close(5)
    assert all(6.0 not in batch for _, batch in runner.batches)
