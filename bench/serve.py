"""Serving benchmark: `nestrank serve` under load, against offline reranking and against infinity-emb.

Starts the server as a subprocess on 127.0.0.1 and drives it with an asyncio httpx load
generator (traffic only to loopback, every phase bounded in requests and seconds):

1. rerank, 20 SciFact documents (BM25 top 20) per request, profiles full and light, at 1, 8
   and 32 concurrent clients (closed loop: each client sends its next request when the last
   one answers): ``pairs_per_s``, ``p50_ms``, ``p99_ms``. A phase stops issuing requests after
   ``--duration`` seconds or ``--requests`` requests; requests still running then are
   cancelled (the server drops their queued pairs) and only pairs answered in the window count.
2. ``served_vs_offline``: served full-profile pairs/s at 32 clients over ``rerank_run``'s
   pairs/s on the same pairs in this process (target >= 0.85).
3. ``light_vs_full``: served light/full throughput at ``--speed-tokens`` (512) passage tokens,
   8 clients (target >= 2.0).
4. ``batching_gain``: MiniLM ``/v1/embeddings`` (one SciFact passage per request) at 32 clients,
   dynamic batching over the same server started with ``--max-batch-size 1`` (target >= 2.0).
5. overload: open-loop Poisson arrivals at 4x the light profile's sustainable request rate
   (its 32-client pairs/s over 20) for ``--overload-seconds``, against the server's bounded queue
   (``--max-queued-tokens``): count of 429s, of 5xx (target 0), and the server's peak RSS.
6. peer: infinity-emb serving the same all-MiniLM-L6-v2 directory (installed, if missing, into
   its own venv under ``out/peer-infinity``; never a project dependency), ``/embeddings`` at 32
   clients: ``vs_infinity`` = nestrank's embeddings/s over infinity's (target >= 1.0).

The last line printed is one JSON object. Sizes are flags, so the run fits the machine:

    python bench/serve.py --dataset ../shared/data/scifact --duration 30 --overload-seconds 60
    python bench/serve.py --reranker out/my-matryoshka --duration 60   # a trained model, later
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A server subprocess on 127.0.0.1 (nestrank or the peer), stopped with SIGTERM."""

    def __init__(self, command: list[str], port: int, ready_path: str, log: Path, env: dict | None = None) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = log.open("w")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; see {log}")
            try:
                if httpx.get(self.url + ready_path, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"server not ready after 900 s; see {log}")

    def rss_mb(self) -> float:
        import psutil

        process = psutil.Process(self.process.pid)
        return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def nestrank_server(models: list[str], out: Path, name: str, *extra: str) -> Server:
    port = free_port()
    command = [sys.executable, "-c", "from nestrank.cli import main; main()", "serve", "--port", str(port),
               "--device", "cpu"]
    for model in models:
        command += ["--model", model]
    return Server(command + list(extra), port, "/ready", out / f"{name}.log")


async def closed_loop(url: str, bodies: list[dict], clients: int, duration: float, max_requests: int,
                      items: int, metrics_url: str | None = None) -> dict:
    """``clients`` concurrent clients sending ``bodies`` in turn for ``duration`` seconds at most.

    ``items_per_s`` counts what the server computed in the window (``nestrank_items_computed``
    from ``metrics_url``) when given, else the items of the requests answered in it: rerank
    requests are long next to a window on a busy CPU, so counting only finished requests would
    undercount. Latencies are those of the requests answered in the window.
    """
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    sent = 0
    computed_before = computed(metrics_url)
    start = time.perf_counter()
    stop_at = start + duration

    async def client(session: httpx.AsyncClient) -> None:
        nonlocal sent
        while time.perf_counter() < stop_at and sent < max_requests:
            body = bodies[sent % len(bodies)]
            sent += 1
            begin = time.perf_counter()
            response = await session.post(url, json=body)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code == 200:
                latencies.append(time.perf_counter() - begin)

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients + 4)) as session:
        tasks = [asyncio.create_task(client(session)) for _ in range(clients)]
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, stop_at - time.perf_counter()) + 0.01)
        elapsed = time.perf_counter() - start
        done_items = computed(metrics_url) - computed_before if metrics_url else len(latencies) * items
        for task in pending:  # cancelled: the server drops their queued pairs
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    settle(metrics_url)
    return {"clients": clients, "requests": len(latencies), "items_per_s": round(done_items / elapsed, 3),
            "p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
            "p99_ms": round(1000 * _quantile(latencies, 0.99), 1) if latencies else None,
            "seconds": round(elapsed, 1), "statuses": statuses}


def computed(metrics_url: str | None) -> float:
    """Pairs (or texts) the server has computed so far, summed over its models."""
    if metrics_url is None:
        return 0.0
    text = httpx.get(metrics_url, timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("nestrank_items_computed_total"))


def settle(metrics_url: str | None, limit_s: float = 90.0) -> None:
    """Wait until the server computes nothing more (the batch cut off by a phase's end), at most ``limit_s``."""
    if metrics_url is None:
        return
    deadline = time.monotonic() + limit_s
    last = computed(metrics_url)
    while time.monotonic() < deadline:
        time.sleep(3)
        now = computed(metrics_url)
        if now == last:
            return
        last = now


async def open_loop(server: Server, url: str, bodies: list[dict], rate: float, seconds: float) -> dict:
    """Poisson arrivals at ``rate`` per second for ``seconds`` (no waiting on answers); peak RSS sampled."""
    statuses: dict[int, int] = {}
    peak = server.rss_mb()
    rng = random.Random(0)
    tasks = []

    async def one(session: httpx.AsyncClient, body: dict) -> None:
        try:
            response = await session.post(url, json=body)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        except httpx.HTTPError as exc:
            statuses[type(exc).__name__] = statuses.get(type(exc).__name__, 0) + 1

    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=1000)) as session:
        start = time.perf_counter()
        next_at, i = start, 0
        while next_at < start + seconds:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            tasks.append(asyncio.create_task(one(session, bodies[i % len(bodies)])))
            i += 1
            next_at += rng.expovariate(rate)
            peak = max(peak, server.rss_mb())
        drain_until = time.perf_counter() + 2 * seconds
        while not all(t.done() for t in tasks) and time.perf_counter() < drain_until:
            await asyncio.sleep(0.2)
            peak = max(peak, server.rss_mb())
        unanswered = sum(not t.done() for t in tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    server_errors = sum(n for s, n in statuses.items() if isinstance(s, int) and s >= 500)
    return {"rate_per_s": round(rate, 3), "seconds": seconds, "sent": len(tasks),
            "count_429": statuses.get(429, 0), "count_5xx": server_errors, "statuses": statuses,
            "unanswered_after_2x_window": unanswered, "peak_rss_mb": round(peak, 1)}


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rerank_bodies(dataset: Path, queries: int, docs: int) -> tuple[list[dict], list]:
    """Rerank requests: SciFact test queries with their BM25 top ``docs`` documents."""
    from nestrank.data import Dataset
    from nestrank.retrieve import BM25Index

    ds = Dataset.open(dataset)
    test = ds.split_queries("test")
    chosen = dict(list(test.items())[:queries])
    run = BM25Index.build(ds.corpus).search(chosen, k=docs)
    bodies = []
    for qid, text in chosen.items():
        documents = ds.corpus.get_many(run.doc_ids(qid, docs))
        bodies.append({"query": text, "documents": [d.full_text for d in documents]})
    return bodies, [ds, run, chosen]


def offline_pairs_per_s(reranker_name: str, context: list, docs: int, passage_tokens: int, queries: int) -> float:
    """``rerank_run`` pairs/s (full model) on the first ``queries`` of the same pairs, in this process."""
    import torch

    from nestrank.rerank import load_reranker, rerank_run

    torch.set_num_threads(1)
    ds, run, chosen = context
    reranker = load_reranker(reranker_name, device="cpu", max_passage_tokens=passage_tokens)
    subset = run.top(docs)
    subset = type(run)({qid: subset[qid] for qid in list(subset)[:queries]})
    pairs = sum(len(subset[q]) for q in subset)
    start = time.perf_counter()
    rerank_run(subset, chosen, ds.corpus, reranker, rerank_depth=docs, show_progress=False)
    return pairs / (time.perf_counter() - start)


def minilm_dir() -> Path:
    from nestrank.models.backbone import preset_path

    return preset_path("minilm-l6")


def infinity_server(out: Path, model_dir: Path) -> tuple[Server | None, str | None]:
    """infinity-emb in its own venv (installed when missing), or why it could not run."""
    venv = ROOT / "out" / "peer-infinity" / ".venv"
    python = venv / "bin" / "python"
    log = out / "infinity-install.log"
    try:
        usable = python.exists() and subprocess.run([str(python), "-c", "import infinity_emb, sentence_transformers"],
                                                    capture_output=True).returncode == 0
        if not usable:
            with log.open("w") as handle:
                if not python.exists():
                    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, stdout=handle, stderr=handle)
                for spec in (["torch==2.13.0"], ["infinity-emb[server,torch]"]):
                    subprocess.run([str(python), "-m", "pip", "install", "-q", *spec], check=True, stdout=handle,
                                   stderr=handle, timeout=1800)
        port = free_port()
        command = [str(venv / "bin" / "infinity_emb"), "v2", "--model-id", str(model_dir), "--port", str(port),
                   "--host", "127.0.0.1", "--engine", "torch", "--device", "cpu", "--served-model-name", "minilm"]
        return Server(command, port, "/health", out / "infinity.log", {"HF_HUB_OFFLINE": "1",
                                                                       "INFINITY_ANONYMOUS_USAGE_STATS": "0"}), None
    except (subprocess.SubprocessError, RuntimeError, OSError) as exc:
        return None, f"{type(exc).__name__}: {exc} (see {log} / {out / 'infinity.log'})"


def compare_peer(args: argparse.Namespace, texts: list[str], embed_dyn: dict) -> dict:
    """infinity-emb's ``/embeddings`` at 32 clients on the same MiniLM directory, and ``vs_infinity``."""
    peer, why = infinity_server(args.out, minilm_dir())
    if peer is None:
        return {"nestrank_embeddings": embed_dyn, "vs_infinity": None, "infinity_error": why}
    try:
        peer_bodies = [{"model": "minilm", "input": [t]} for t in texts]
        figures = asyncio.run(closed_loop(peer.url + "/embeddings", peer_bodies, 32, args.duration,
                                          args.requests * 10, 1))
    finally:
        peer.stop()
    return {"nestrank_embeddings": embed_dyn, "infinity": figures,
            "vs_infinity": round(embed_dyn["items_per_s"] / max(figures["items_per_s"], 1e-9), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=ROOT / ".." / "shared" / "data" / "scifact")
    parser.add_argument("--reranker", default="smollm2-135m", help="Matryoshka reranker: preset or checkpoint")
    parser.add_argument("--embedder", default="minilm-l6")
    parser.add_argument("--docs", type=int, default=20, help="documents per rerank request")
    parser.add_argument("--queries", type=int, default=40, help="distinct SciFact test queries cycled")
    parser.add_argument("--passage-tokens", type=int, default=128, help="passage cap in the load phases")
    parser.add_argument("--speed-tokens", type=int, default=512, help="passage length of the light/full ratio")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per load phase")
    parser.add_argument("--requests", type=int, default=2000, help="requests per load phase at most")
    parser.add_argument("--overload-seconds", type=float, default=60.0)
    parser.add_argument("--batch-tokens", type=int, default=1024, help="the reranker's --max-batch-tokens: small "
                        "batches finish often, so a window counts them finely")
    parser.add_argument("--max-queued-tokens", type=int, default=131072, help="queue bound (32 clients x 20 pairs "
                        "fit)")
    parser.add_argument("--timeout-ms", type=int, default=600000, help="server deadline (the queue of a busy CPU "
                        "drains slowly)")
    parser.add_argument("--offline-queries", type=int, default=3)
    parser.add_argument("--no-peer", action="store_true", help="skip infinity-emb")
    parser.add_argument("--peer-only", action="store_true", help="only MiniLM embeddings: nestrank vs infinity-emb")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "bench-serve")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    levels = [int(c) for c in args.concurrency.split(",")]
    result: dict = {"reranker": args.reranker, "embedder": args.embedder, "docs_per_request": args.docs,
                    "passage_tokens": args.passage_tokens, "duration_s": args.duration}
    bodies, context = rerank_bodies(args.dataset, args.queries, args.docs)
    texts = [doc for body in bodies for doc in body["documents"]]
    embed_bodies = [{"model": "embed", "input": text} for text in texts]
    if args.peer_only:
        server = nestrank_server([f"embed={args.embedder}"], args.out, "nestrank-embed")
        try:
            embed_dyn = asyncio.run(closed_loop(server.url + "/v1/embeddings", embed_bodies, 32, args.duration,
                                                args.requests * 10, 1, server.url + "/metrics"))
        finally:
            server.stop()
        result.update(compare_peer(args, texts, embed_dyn))
        print(json.dumps(result), flush=True)
        return

    server = nestrank_server([f"rerank={args.reranker}", f"embed={args.embedder}"], args.out, "nestrank",
                             "--max-tokens-per-doc", str(args.passage_tokens), "--max-batch-tokens",
                             str(args.batch_tokens), "--max-queued-tokens", str(args.max_queued_tokens),
                             "--timeout-ms", str(args.timeout_ms))
    try:
        rerank: dict = {}
        for profile in ("full", "light"):
            profiled = [{**b, "model": f"rerank:{profile}"} for b in bodies]
            for clients in levels:
                figures = asyncio.run(closed_loop(server.url + "/v2/rerank", profiled, clients, args.duration,
                                                  args.requests, args.docs, server.url + "/metrics"))
                rerank[f"{profile}@{clients}"] = {"pairs_per_s": figures.pop("items_per_s"), **figures}
                print(json.dumps({profile: rerank[f"{profile}@{clients}"]}), flush=True)
        result["rerank"] = rerank
        top = max(levels)
        speed = {p: rerank[f"{p}@{top}"]["pairs_per_s"] for p in ("full", "light")}
        result["light_vs_full_at_passage_tokens"] = round(speed["light"] / max(speed["full"], 1e-9), 3)
        embed_dyn = asyncio.run(closed_loop(server.url + "/v1/embeddings", embed_bodies, 32, args.duration,
                                            args.requests * 10, 1, server.url + "/metrics"))
        light_rate = rerank[f"light@{top}"]["pairs_per_s"] / args.docs  # sustainable requests/s
        overload_bodies = [{**b, "model": "rerank:light"} for b in bodies]
        result["overload"] = asyncio.run(open_loop(server, server.url + "/v2/rerank", overload_bodies,
                                                   4 * max(light_rate, 0.05), args.overload_seconds))
        print(json.dumps({"overload": result["overload"]}), flush=True)
    finally:
        server.stop()
    result["offline_pairs_per_s"] = round(offline_pairs_per_s(args.reranker, context, args.docs, args.passage_tokens,
                                                              args.offline_queries), 3)
    result["served_vs_offline"] = round(rerank[f"full@{top}"]["pairs_per_s"] / result["offline_pairs_per_s"], 3)

    long_server = nestrank_server([f"rerank={args.reranker}"], args.out, "nestrank-512",
                                  "--max-tokens-per-doc", str(args.speed_tokens), "--max-batch-tokens",
                                  str(args.batch_tokens), "--timeout-ms", str(args.timeout_ms))
    try:
        ratio = {}
        for profile in ("full", "light"):
            profiled = [{**b, "model": f"rerank:{profile}"} for b in bodies]
            ratio[profile] = asyncio.run(closed_loop(long_server.url + "/v2/rerank", profiled, 8, 2 * args.duration,
                                                     args.requests, args.docs, long_server.url + "/metrics"))
        result["at_speed_tokens"] = {"passage_tokens": args.speed_tokens, **ratio}
        result["light_vs_full"] = round(ratio["light"]["items_per_s"] / max(ratio["full"]["items_per_s"], 1e-9), 3)
    finally:
        long_server.stop()

    single = nestrank_server([f"embed={args.embedder}"], args.out, "nestrank-batch1", "--max-batch-size", "1")
    try:
        embed_one = asyncio.run(closed_loop(single.url + "/v1/embeddings", embed_bodies, 32, args.duration,
                                            args.requests * 10, 1, single.url + "/metrics"))
    finally:
        single.stop()
    result["embeddings"] = {"dynamic": embed_dyn, "batch_size_1": embed_one}
    result["batching_gain"] = round(embed_dyn["items_per_s"] / max(embed_one["items_per_s"], 1e-9), 3)

    if not args.no_peer:
        result.update(compare_peer(args, texts, embed_dyn))
    targets = {"served_vs_offline>=0.85": result["served_vs_offline"] >= 0.85,
               "batching_gain>=2.0": result["batching_gain"] >= 2.0,
               "light_vs_full>=2.0": result["light_vs_full"] >= 2.0,
               "overload_0_5xx": result["overload"]["count_5xx"] == 0}
    if result.get("vs_infinity") is not None:
        targets["vs_infinity>=1.0"] = result["vs_infinity"] >= 1.0
    result["targets_met"] = targets
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
