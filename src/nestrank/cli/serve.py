"""``nestrank serve``: the HTTP reranking and embedding server (a thin layer over :mod:`nestrank.serve`)."""

from __future__ import annotations

from typing import Annotated

import typer

from nestrank.cli.app import app


@app.command("serve")
def serve_command(
    model: Annotated[list[str], typer.Option("--model", "-m", help="NAME=PATH_OR_PRESET, repeatable (e.g. "
                                             "rerank=smollm2-135m, embed=minilm-l6; NAME=embed:PATH forces the "
                                             "task).", show_default=False)],
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8080,
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="NESTRANK_API_KEY", show_envvar=True,
                                                help="Require 'Authorization: Bearer KEY' on the API routes.")] = None,
    max_batch_tokens: Annotated[int, typer.Option("--max-batch-tokens", help="Padded tokens per forward "
                                                  "batch.")] = 8192,
    max_batch_size: Annotated[int | None, typer.Option("--max-batch-size", help="Pairs per batch (default: the token "
                                                       "budget only; 1 disables batching).")] = None,
    max_queued_tokens: Annotated[int, typer.Option("--max-queued-tokens", help="Tokens waiting per model before "
                                                   "requests get 429.")] = 262144,
    max_docs_per_request: Annotated[int, typer.Option("--max-docs-per-request", help="Documents per request "
                                                      "(413 beyond).")] = 1000,
    max_tokens_per_doc: Annotated[int | None, typer.Option("--max-tokens-per-doc", help="Cap on passage tokens "
                                                           "(default: the model's).")] = None,
    default_profile: Annotated[str, typer.Option("--default-profile", help="Profile of requests that choose no "
                                                 "cost.")] = "full",
    timeout_ms: Annotated[int, typer.Option("--timeout-ms", help="Deadline of a request; items still queued then "
                                            "are dropped (504).")] = 60000,
    index: Annotated[str | None, typer.Option("--index", help="Index directory for POST /search.")] = None,
    corpus: Annotated[str | None, typer.Option("--corpus", help="The corpus the index was built from (file or BEIR "
                                               "directory).")] = None,
    search_model: Annotated[str | None, typer.Option("--search-model", help="Reranker NAME that reranks /search "
                                                     "results.")] = None,
    search_rerank_depth: Annotated[int, typer.Option("--search-rerank-depth", help="/search candidates reranked "
                                                     "when the request does not say.")] = 20,
    device: Annotated[str | None, typer.Option("--device", help="cuda, cpu (default: CUDA if available).")] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="auto, float32, bfloat16, float16.")] = "auto",
    engine: Annotated[str, typer.Option("--engine", help="local (one uvicorn process) or ray (Ray Serve "
                                        "replicas).")] = "local",
    replicas: Annotated[int, typer.Option("--replicas", help="Ray Serve replicas (with --engine ray).")] = 1,
) -> None:
    """Serve rerankers and embedders over HTTP (Cohere, Jina, TEI, OpenAI shapes), with per-request cost.

    Example: nestrank serve --model rerank=smollm2-135m --model embed=minilm-l6 --port 8080

    /health answers at once, /ready once the models are loaded and warmed. SIGTERM lets in-flight requests finish, then exits. See docs/serving.md.
    """
    from nestrank.errors import ConfigError
    from nestrank.serve import ServeSettings, parse_model_spec

    settings = ServeSettings(
        models=tuple(parse_model_spec(spec) for spec in model), api_key=api_key, max_batch_tokens=max_batch_tokens,
        max_batch_size=max_batch_size, max_queued_tokens=max_queued_tokens,
        max_docs_per_request=max_docs_per_request, max_tokens_per_doc=max_tokens_per_doc,
        default_profile=default_profile, timeout_ms=timeout_ms, device=device, dtype=dtype, index=index,
        corpus=corpus, search_model=search_model, search_rerank_depth=search_rerank_depth)
    if engine == "local":
        from nestrank.serve import run

        run(settings, host=host, port=port)
    elif engine == "ray":
        from nestrank.serve.ray_serve import run_ray

        run_ray(settings, host=host, port=port, replicas=replicas)
    else:
        raise ConfigError(f"--engine must be 'local' or 'ray', got {engine!r}")
