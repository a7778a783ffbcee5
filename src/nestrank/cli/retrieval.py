"""``nestrank index``, ``nestrank search`` and ``nestrank fuse``: the first stage.

Progress and timing lines go to stderr; results go to files.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, get_args

import typer

from nestrank.cli.app import app
from nestrank.cli.common import (
    CorpusOpt,
    DatasetOpt,
    QueriesOpt,
    SplitOpt,
    check_choice,
    check_model,
    deprecated_option,
    given,
    library_option,
    open_dataset,
    parse_weights,
    renamed,
)
from nestrank.cli.encode import DocModeOpt, PassageTokensOpt, StrideOpt
from nestrank.retrieve.config import BM25_VARIANTS, FAISS_TYPES, FUSION_DEPTH, RRF_K, BM25Config, IndexConfig

INDEX_METHODS = ("bm25", "dense", "hybrid")
_BM25, _FAISS = BM25Config(), IndexConfig()


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
    k1: Annotated[float | None, library_option("--k1", "BM25 term-frequency saturation.", _BM25.k1, min=0)] = None,
    b: Annotated[float | None, library_option("--b", "BM25 length normalisation (0..1).", _BM25.b, min=0, max=1)] = None,
    stemmer: Annotated[str | None, library_option("--stemmer", "Snowball stemmer (PyStemmer name) or 'none'.",
                                                  _BM25.stemmer)] = None,
    stopwords: Annotated[str | None, library_option("--stopwords", "Stopword list language code (en, de, fr, ...) "
                                                    "or 'none'.", _BM25.stopwords)] = None,
    variant: Annotated[str | None, library_option("--variant", f"BM25 variant: {', '.join(BM25_VARIANTS)}.",
                                                  _BM25.method)] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = False,
    skip_empty: Annotated[bool, typer.Option("--skip-empty", help="bm25: leave out documents with no title and "
                                             "text instead of failing.")] = False,
    embeddings: Annotated[Path | None, typer.Option("--embeddings", help="dense/hybrid: embeddings directory "
                                                    "from `nestrank encode`.")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="dense/hybrid: encode the corpus with this "
                                              "model first (into --embeddings, default OUT.emb).")] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="dense/hybrid: encoder preset (repllama, "
                                               "minilm) with --model.")] = None,
    index_type: Annotated[str | None, library_option("--index-type", "dense/hybrid: FAISS index: "
                                                     f"{', '.join(FAISS_TYPES)} (flat is exact).",
                                                     _FAISS.index_type)] = None,
    hnsw_m: Annotated[int | None, library_option("--hnsw-m", "HNSW links per node.", _FAISS.hnsw_m, min=1)] = None,
    ef_construction: Annotated[int | None, library_option("--ef-construction", "HNSW build beam width.",
                                                          _FAISS.ef_construction, min=1)] = None,
    ef_search: Annotated[int | None, library_option("--ef-search", "HNSW search beam width.", _FAISS.ef_search, min=1)] = None,
    nlist: Annotated[int | None, typer.Option("--nlist", min=1, help="IVF clusters per shard (default ~4*sqrt(n)).")] = None,
    nprobe: Annotated[int | None, library_option("--nprobe", "IVF clusters searched per query.", _FAISS.nprobe, min=1)] = None,
    pq_m: Annotated[int | None, library_option("--pq-m", "IVF-PQ sub-quantizers (divides the dimension).",
                                               _FAISS.pq_m, min=1)] = None,
    pq_nbits: Annotated[int | None, library_option("--pq-nbits", "IVF-PQ bits per sub-quantizer code.",
                                                   _FAISS.pq_nbits, min=1)] = None,
    rrf_k: Annotated[float | None, library_option("--rrf-k", "hybrid: RRF constant k.", RRF_K, min=0)] = None,
    fusion_depth: Annotated[int | None, library_option("--fusion-depth", "hybrid: results per sub-index fused per "
                                                       "query.", FUSION_DEPTH, min=1)] = None,
    depth: Annotated[int | None, deprecated_option("--depth", "--fusion-depth")] = None,
    doc_mode: DocModeOpt = None,
    stride: StrideOpt = None,
    passage_tokens: PassageTokensOpt = None,
) -> None:
    """Index a corpus (title + text), e.g. `nestrank index --dataset scifact --out scifact.bm25`."""
    from nestrank.errors import ConfigError
    from nestrank.files import check_output
    from nestrank.retrieve.manifest import MANIFEST

    check_choice(method, INDEX_METHODS, "--method")
    check_choice(variant, BM25_VARIANTS, "--variant")
    check_choice(index_type, FAISS_TYPES, "--index-type")
    check_output(out, directory=True, marker=MANIFEST, what="a nestrank index")
    if method != "bm25" and model is not None:
        check_model(model)
        check_output(embeddings or out.with_name(out.name + ".emb"), directory=True, option="--embeddings")
    fusion_depth = renamed(fusion_depth, depth, "--fusion-depth", "--depth")
    if method == "bm25" and (doc_mode, stride, passage_tokens) != (None, None, None):
        raise ConfigError("--doc-mode, --stride and --passage-tokens apply to --method dense or hybrid")
    bm25 = given(k1=k1, b=b, method=variant)
    bm25.update({name: _none_or(value) for name, value in given(stemmer=stemmer, stopwords=stopwords).items()})
    start = time.perf_counter()
    if method in ("dense", "hybrid"):
        from nestrank.retrieve.build import build_vector_index

        built = build_vector_index(
            method, out, (lambda: open_dataset(dataset, corpus=corpus).corpus) if dataset or corpus else None,
            embeddings=embeddings, model=model,
            preset=preset, config=IndexConfig(**given(index_type=index_type, hnsw_m=hnsw_m, ef_construction=ef_construction,
                                       ef_search=ef_search, nlist=nlist, nprobe=nprobe, pq_m=pq_m, pq_nbits=pq_nbits)),
            bm25_params=bm25, doc_mode=doc_mode, stride=stride, passage_tokens=passage_tokens, progress=progress,
            **given(rrf_k=rrf_k, fusion_depth=fusion_depth))
        _info(f"indexed {built.num_docs} documents ({method}) in {time.perf_counter() - start:.1f}s -> {out}")
        return
    from nestrank.retrieve.bm25 import BM25Index

    docs = open_dataset(dataset, corpus=corpus).open_corpus(on_empty="skip" if skip_empty else "error")
    index = BM25Index.build(docs, show_progress=progress, **bm25)
    index.save(out)
    _info(f"indexed {index.num_docs} documents ({method}) in {time.perf_counter() - start:.1f}s -> {out}")


@app.command("search")
def search_command(
    index: Annotated[Path, typer.Option("--index", "-i", help="Index directory from `nestrank index`.",
                                        show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="TREC run file to write.", show_default=False)],
    dataset: DatasetOpt = None,
    queries: QueriesOpt = None,
    corpus: Annotated[Path | None, typer.Option("--corpus", help="Check that the index was built from this corpus "
                                                "(a .jsonl or .tsv file, or a TREC collection).")] = None,
    split: SplitOpt = "test",
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="Results per query.")] = 100,
    threads: Annotated[int, typer.Option("--threads", min=-1, help="Scoring threads (0: calling thread, -1: one per "
                                         "CPU).")] = 0,
    tag: Annotated[str, typer.Option("--tag", help="Tag column of the TREC run.")] = "nestrank",
) -> None:
    """Search every query of a split (or of --queries FILE) and write a TREC run."""
    from nestrank.files import check_output
    from nestrank.retrieve.index import open_index

    check_output(out)
    ds = open_dataset(dataset, corpus=corpus, queries=queries, split=split)
    # explicit --queries: search all of them; otherwise the queries judged in --split
    query_set = ds.queries if queries is not None else ds.split_queries(split)
    start = time.perf_counter()
    loaded = open_index(index, corpus=ds.open_corpus(on_empty="skip") if corpus is not None else None)
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
    rrf_k: Annotated[float | None, library_option("--rrf-k", "RRF constant k.", RRF_K, min=0)] = None,
    norm: Annotated[str, typer.Option("--norm", help="Linear fusion score normalisation: minmax or zscore.")] = "minmax",
    k: Annotated[int | None, typer.Option("--k", "-k", help="Keep the best K fused results per query.")] = None,
    tag: Annotated[str, typer.Option("--tag", help="Tag column of the TREC run.")] = "nestrank-fused",
) -> None:
    """Fuse several runs into one, e.g. `nestrank fuse bm25.run dense.run --out hybrid.run`."""
    from nestrank.data import Run
    from nestrank.files import check_output
    from nestrank.retrieve.fusion import FUSION_METHODS, Normalisation, fuse

    check_output(out)
    check_choice(method, FUSION_METHODS, "fusion method")
    check_choice(norm, get_args(Normalisation), "--norm")
    weight_values = parse_weights(weights)
    loaded = [Run.read_trec(path) for path in runs]
    fused = fuse(loaded, method, weight_values, norm=norm, k=k, **given(rrf_k=rrf_k))  # type: ignore[arg-type]
    fused.write_trec(out, tag=tag)
    _info(f"fused {len(runs)} runs ({method}) over {len(fused)} queries -> {out}")
