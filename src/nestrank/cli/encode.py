"""``nestrank encode``: sharded corpus encoding (local or Ray), a thin layer over
:func:`nestrank.retrieve.encode.run_encoding`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from nestrank.cli.app import app
from nestrank.cli.common import (
    CorpusOpt,
    DatasetOpt,
    check_choice,
    check_device,
    check_model,
    given,
    library_option,
    open_dataset,
)
from nestrank.retrieve.config import DOC_MODES, EMBEDDING_DTYPE, ENCODE_CHUNK_SIZE

# Long documents (also options of `nestrank index --method dense|hybrid`).
DocModeOpt = Annotated[str | None, typer.Option("--doc-mode", help=f"Long documents: {' or '.join(DOC_MODES)} "
                                                "(cut at the passage length; or overlapping segments, one vector "
                                                "each, a document scoring as its best). Default: truncate.",
                                                show_default=False)]
StrideOpt = Annotated[int | None, typer.Option("--stride", min=1, help="maxp: tokens between segment starts (default: "
                                               "half a passage).", show_default=False)]
PassageTokensOpt = Annotated[int | None, typer.Option("--passage-tokens", min=1, help="Encoder passage length in tokens "
                                                      "(default: the encoder's).", show_default=False)]


@app.command("encode")
def encode_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Embeddings directory (shards + manifest.json); "
                                      "re-running resumes it.", show_default=False)],
    model: Annotated[str, typer.Option("--model", "-m", help="Encoder: a preset (minilm-l6, smollm2-135m), a local "
                                       "model dir, GGUF file, LoRA adapter dir or hub id.", show_default=False)],
    dataset: DatasetOpt = None,
    corpus: CorpusOpt = None,
    preset: Annotated[str | None, typer.Option("--preset", help="Encoder preset (repllama, minilm); default: "
                                               "the encoder's choice for the model.")] = None,
    shard_id: Annotated[int | None, typer.Option("--shard-id", min=0, help="Encode only this shard (0-based); default: "
                                                 "every shard not yet done.")] = None,
    num_shards: Annotated[int, typer.Option("--num-shards", min=1, help="Contiguous shards to cut the corpus into.")] = 1,
    dtype: Annotated[str | None, library_option("--dtype", "Stored vector type: float16 or float32.",
                                                EMBEDDING_DTYPE)] = None,
    batch_tokens: Annotated[int | None, typer.Option("--batch-tokens", min=1, help="Token budget per encoder "
                                                     "batch.")] = None,
    chunk_size: Annotated[int | None, library_option("--chunk-size", "Documents read and written per step.",
                                                     ENCODE_CHUNK_SIZE, min=1)] = None,
    engine: Annotated[str, typer.Option("--engine", help="local (this process) or ray (a Ray Data actor "
                                        "pool; connects to RAY_ADDRESS or starts a local Ray).")] = "local",
    actors: Annotated[int | None, typer.Option("--actors", min=1, help="Ray: encoder actors (default: one per GPU, "
                                               "else 1).")] = None,
    gpus_per_actor: Annotated[float | None, typer.Option("--gpus-per-actor", min=0, help="Ray: GPUs per actor "
                                                         "(default 1 when the cluster has GPUs).")] = None,
    device: Annotated[str | None, typer.Option("--device", help="Local engine: torch device (default: CUDA "
                                               "when available).")] = None,
    doc_mode: DocModeOpt = None,
    stride: StrideOpt = None,
    passage_tokens: PassageTokensOpt = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Encode a corpus into sharded embeddings, e.g. `nestrank encode -d scifact -m minilm-l6 -o scifact.emb`."""
    from nestrank.files import check_output
    from nestrank.models.dense import ENCODER_PRESETS
    from nestrank.retrieve.encode import ENGINES, run_encoding

    check_output(out, directory=True)
    check_choice(engine, ENGINES, "--engine")
    check_choice(preset, list(ENCODER_PRESETS), "--preset")
    check_choice(doc_mode, DOC_MODES, "--doc-mode")
    check_device(device)
    check_model(model)
    start = time.perf_counter()
    docs = open_dataset(dataset, corpus=corpus).corpus
    manifest = run_encoding(docs, out, model, preset=preset, shard_id=shard_id, num_shards=num_shards,
                            batch_tokens=batch_tokens, engine=engine, actors=actors, gpus_per_actor=gpus_per_actor,
                            device=device, progress=progress, doc_mode=doc_mode or "truncate", stride=stride,
                            passage_tokens=passage_tokens, **given(dtype=dtype, chunk_size=chunk_size))
    done = len(manifest["shards"])
    state = "complete" if manifest["complete"] else f"{done}/{manifest['num_shards']} shards done"
    rows = sum(entry.get("rows", entry["count"]) for entry in manifest["shards"].values())
    segments = f", {rows} segments" if manifest.get("doc_mode") == "maxp" else ""
    typer.echo(f"encoded {manifest['num_docs']} documents ({state}{segments}, dim {manifest['dim']}, {manifest['dtype']}) "
               f"in {time.perf_counter() - start:.1f}s -> {out}", err=True)
