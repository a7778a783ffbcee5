"""``nestrank index``, ``nestrank search`` and ``nestrank fuse``: the first stage.

Progress and timing lines go to stderr; results go to files.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from nestrank.cli import app
from nestrank.cli.common import CorpusOpt, DatasetOpt, QueriesOpt, SplitOpt, open_dataset

INDEX_METHODS = ("bm25", "dense", "hybrid")


def _none_or(value: str) -> str | None:
    return None if value.strip().lower() in ("none", "") else value


def _info(message: str) -> None:
    typer.echo(message, err=True)


@app.command("index")
def index_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Index directory to write (replaced atomically).",
                                      show_default=False)],
    dataset: DatasetOpt = None,
    corpus: CorpusOpt = None,
    method: Annotated[str, typer.Option("--method", help=f"Index type: {', '.join(INDEX_METHODS)}.")] = "bm25",
    k1: Annotated[float, typer.Option("--k1", help="BM25 term-frequency saturation.")] = 1.5,
    b: Annotated[float, typer.Option("--b", help="BM25 length normalisation (0..1).")] = 0.75,
    stemmer: Annotated[str, typer.Option("--stemmer", help="Snowball stemmer (PyStemmer name) or 'none'.")] = "english",
    stopwords: Annotated[str, typer.Option("--stopwords", help="Stopword list language code (en, de, fr, ...) "
                                           "or 'none'.")] = "en",
    variant: Annotated[str, typer.Option("--variant", help="BM25 variant: lucene, robertson, atire, bm25l, "
                                         "bm25+.")] = "lucene",
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = False,
    skip_empty: Annotated[bool, typer.Option("--skip-empty", help="bm25: leave out documents with no title and "
                                             "text instead of failing.")] = False,
    embeddings: Annotated[Path | None, typer.Option("--embeddings", help="dense/hybrid: embeddings directory "
                                                    "from `nestrank encode`.")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="dense/hybrid: encode the corpus with this "
                                              "model first (into --embeddings, default OUT.emb).")] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="dense/hybrid: encoder preset (repllama, "
                                               "minilm) with --model.")] = None,
    index_type: Annotated[str, typer.Option("--index-type", help="dense/hybrid: FAISS index: flat (exact), "
                                            "hnsw, ivf, ivfpq.")] = "flat",
    hnsw_m: Annotated[int, typer.Option("--hnsw-m", help="HNSW links per node.")] = 32,
    ef_construction: Annotated[int, typer.Option("--ef-construction", help="HNSW build beam width.")] = 200,
    ef_search: Annotated[int, typer.Option("--ef-search", help="HNSW search beam width.")] = 128,
    nlist: Annotated[int | None, typer.Option("--nlist", help="IVF clusters per shard (default ~4*sqrt(n)).")] = None,
    nprobe: Annotated[int, typer.Option("--nprobe", help="IVF clusters searched per query.")] = 16,
    pq_m: Annotated[int, typer.Option("--pq-m", help="IVF-PQ sub-quantizers (divides the dimension).")] = 16,
    pq_nbits: Annotated[int, typer.Option("--pq-nbits", help="IVF-PQ bits per sub-quantizer code.")] = 8,
    rrf_k: Annotated[float, typer.Option("--rrf-k", help="hybrid: RRF constant k.")] = 60,
    depth: Annotated[int, typer.Option("--depth", help="hybrid: results per sub-index fused per query.")] = 1000,
) -> None:
    """Index a corpus (title + text), e.g. `nestrank index --dataset scifact --out scifact.bm25`."""
    from nestrank.errors import ConfigError

    if method not in INDEX_METHODS:
        raise ConfigError(f"unknown --method {method!r}; choose one of: {', '.join(INDEX_METHODS)}")
    start = time.perf_counter()
    if method in ("dense", "hybrid"):
        from nestrank.cli.encode import build_vector_index

        built = build_vector_index(
            method, out, lambda: open_dataset(dataset, corpus=corpus).corpus, embeddings=embeddings, model=model,
            preset=preset, faiss_params={"index_type": index_type, "hnsw_m": hnsw_m, "ef_construction": ef_construction,
                                         "ef_search": ef_search, "nlist": nlist, "nprobe": nprobe, "pq_m": pq_m,
                                         "pq_nbits": pq_nbits},
            rrf_k=rrf_k, depth=depth, progress=progress,
            bm25_params={"k1": k1, "b": b, "stemmer": _none_or(stemmer), "stopwords": _none_or(stopwords),
                         "method": variant})
        _info(f"indexed {built.num_docs} documents ({method}) in {time.perf_counter() - start:.1f}s -> {out}")
        return
    from nestrank.data import Corpus
    from nestrank.retrieve.bm25 import BM25Index

    docs = Corpus.open(open_dataset(dataset, corpus=corpus).corpus_path, on_empty="skip" if skip_empty else "error")

    index = BM25Index.build(docs, k1=k1, b=b, stemmer=_none_or(stemmer), stopwords=_none_or(stopwords),
                            method=variant, show_progress=progress)
    index.save(out)
    _info(f"indexed {index.num_docs} documents ({method}) in {time.perf_counter() - start:.1f}s -> {out}")


@app.command("search")
def search_command(
    index: Annotated[Path, typer.Option("--index", "-i", help="Index directory from `nestrank index`.",
                                        show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="TREC run file to write.", show_default=False)],
    dataset: DatasetOpt = None,
    queries: QueriesOpt = None,
    split: SplitOpt = "test",
    k: Annotated[int, typer.Option("--k", "-k", help="Results per query.")] = 100,
    threads: Annotated[int, typer.Option("--threads", help="Scoring threads (0: calling thread, -1: one per "
                                         "CPU).")] = 0,
    tag: Annotated[str, typer.Option("--tag", help="Tag column of the TREC run.")] = "nestrank",
) -> None:
    """Search every query of a split (or of --queries FILE) and write a TREC run."""
    from nestrank.retrieve.index import open_index

    ds = open_dataset(dataset, queries=queries, split=split)
    # explicit --queries: search all of them; otherwise the queries judged in --split
    query_set = ds.queries if queries is not None else ds.split_queries(split)
    start = time.perf_counter()
    loaded = open_index(index)
    run = loaded.search(query_set, k=k, threads=threads)
    seconds = time.perf_counter() - start
    run.write_trec(out, tag=tag)
    empty = sum(1 for qid in run if not run[qid])
    note = f" ({empty} with no matching document)" if empty else ""
    _info(f"searched {len(query_set)} queries{note} in {seconds:.2f}s -> {out}")


@app.command("fuse")
def fuse_command(
    runs: Annotated[list[Path], typer.Argument(help="TREC run files to fuse.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Fused TREC run file to write.", show_default=False)],
    method: Annotated[str, typer.Option("--method", help="rrf (reciprocal rank) or linear (normalised "
                                        "scores).")] = "rrf",
    weights: Annotated[str | None, typer.Option("--weights", help="Comma-separated weight per run "
                                                "(default: equal).")] = None,
    rrf_k: Annotated[float, typer.Option("--rrf-k", help="RRF constant k.")] = 60,
    norm: Annotated[str, typer.Option("--norm", help="Linear fusion score normalisation: minmax or zscore.")] = "minmax",
    k: Annotated[int | None, typer.Option("--k", "-k", help="Keep the best K fused results per query.")] = None,
    tag: Annotated[str, typer.Option("--tag", help="Tag column of the TREC run.")] = "nestrank-fused",
) -> None:
    """Fuse several runs into one, e.g. `nestrank fuse bm25.run dense.run --out hybrid.run`."""
    from nestrank.data import Run
    from nestrank.errors import ConfigError
    from nestrank.retrieve.fusion import fuse

    weight_values = None
    if weights is not None:
        try:
            weight_values = [float(w) for w in weights.split(",")]
        except ValueError:
            raise ConfigError(f"--weights must be comma-separated numbers, got {weights!r}") from None
    if k is not None and k < 1:
        raise ConfigError(f"--k must be at least 1, got {k}")
    loaded = [Run.read_trec(path) for path in runs]
    fused = fuse(loaded, method, weight_values, rrf_k=rrf_k, norm=norm, depth=k)  # type: ignore[arg-type]
    fused.write_trec(out, tag=tag)
    _info(f"fused {len(runs)} runs ({method}) over {len(fused)} queries -> {out}")
