"""A server's running state: loaded engines, one scheduler each, the latency model, metrics, readiness.

:meth:`ServerState.start` loads and warms the models on a background thread, so the HTTP
server answers ``/health`` (alive) at once and ``/ready`` turns 200 only when everything is
loaded and warmed. :meth:`ServerState.close` drains every scheduler (queued work finishes,
new work is refused) and stops the workers. Tests and embedding applications can call
:meth:`load` themselves and hand the state to :func:`nestrank.serve.create_app`; an app then
leaves a state it did not start running when its lifespan ends.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from nestrank.serve.cost import LatencyModel
from nestrank.serve.engines import EmbedEngine, Engine, RerankEngine, load_engine, warm
from nestrank.serve.errors import ApiError
from nestrank.serve.metrics import Metrics
from nestrank.serve.scheduler import Job, Scheduler
from nestrank.serve.settings import ServeSettings

log = logging.getLogger("nestrank.serve")


class ServerState:
    """Everything a running server holds; see the module docstring."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.engines: dict[str, Engine] = {}
        self.schedulers: dict[str, Scheduler] = {}
        self.latency = LatencyModel()
        self.metrics = Metrics()
        self.search: Any = None  # a nestrank.serve.search.SearchPipeline once loaded
        self.ready = threading.Event()
        self.failed: str | None = None
        self.started = False
        self._loader: threading.Thread | None = None

    # ----------------------------------------------------------------- life cycle

    def start(self) -> None:
        """Load and warm the models on a background thread (once); ``/ready`` says when it is done."""
        if self.started:
            return
        self.started = True
        self._loader = threading.Thread(target=self._load_logged, name="nestrank-load", daemon=True)
        self._loader.start()

    def load(self) -> ServerState:
        """Load every model, start its scheduler, warm it, load the search pipeline; then mark ready."""
        self.started = True
        settings = self.settings
        for spec in settings.models:
            begin = time.perf_counter()
            engine = load_engine(spec, settings)
            self.add_engine(engine)
            log.info("loaded %s (%s, %s) from %s in %.1fs", spec.name, spec.task, engine.kind, spec.source,
                     time.perf_counter() - begin)
        if settings.index is not None:
            from nestrank.serve.search import SearchPipeline

            self.search = SearchPipeline.open(settings.index, settings.corpus, settings.search_model,
                                              settings.search_rerank_depth)
        if settings.warmup:
            self.warm()
        self.ready.set()
        self.metrics.ready.set(1)
        return self

    def add_engine(self, engine: Engine) -> None:
        """Serve ``engine`` (with its own scheduler and worker thread)."""
        name = engine.name
        settings = self.settings

        def on_batch(stats):
            self.latency.observe(name, stats)
            self.metrics.observe_batch(name, stats)
            self.metrics.queued_tokens.labels(name).set(self.schedulers[name].queued_tokens)

        self.engines[name] = engine
        self.schedulers[name] = Scheduler(
            name, engine.run, max_batch_tokens=settings.max_batch_tokens, max_batch_size=settings.max_batch_size,
            max_queued_tokens=settings.max_queued_tokens, on_batch=on_batch,
            on_drop=lambda reason, n: self.metrics.dropped.labels(name, reason).inc(n))

    def warm(self) -> None:
        """Run every model (each profile of a reranker) once through its scheduler, seeding the latency model."""
        for name, engine in self.engines.items():
            for key, payloads, lengths in warm(engine):
                job = Job(key, payloads, lengths, deadline=time.monotonic() + 600)
                self.schedulers[name].submit(job)
                job.future.result()

    def close(self, timeout: float | None = 30.0) -> None:
        """Drain: refuse new work, finish what is queued, stop every worker."""
        self.ready.clear()
        self.metrics.ready.set(0)
        for scheduler in self.schedulers.values():
            scheduler.close(timeout)

    def _load_logged(self) -> None:
        try:
            self.load()
            log.info("ready: %s", ", ".join(f"{n} ({e.task})" for n, e in self.engines.items()))
        except Exception as exc:  # reported by /ready and the log; the process stays up to say why
            self.failed = f"{type(exc).__name__}: {exc}"
            log.exception("loading the models failed")

    # ----------------------------------------------------------------- lookups for handlers

    def require_ready(self) -> None:
        """Raise 503 until every model is loaded and warmed."""
        if not self.ready.is_set():
            why = f"loading failed: {self.failed}" if self.failed else "models are still loading"
            raise ApiError(503, f"not ready ({why})", code="not_ready")

    def engine(self, model: str | None, task: str) -> tuple[Engine, str | None]:
        """The engine for a request's ``model`` (``name`` or ``name:profile``) and the alias's profile.

        ``None`` picks the first served model of the task. Raises 404 for an unknown name and
        400 for a model of the other task.
        """
        self.require_ready()
        alias = None
        if model is None:
            found = [e for e in self.engines.values() if e.task == task]
            if not found:
                raise ApiError(404, f"this server has no {task} model", code="model_not_found", param="model")
            return found[0], None
        name = model
        if model not in self.engines and ":" in model:
            name, _, alias = model.rpartition(":")
        engine = self.engines.get(name)
        if engine is None:
            raise ApiError(404, f"model {model!r} not found (served: {', '.join(self.engines)})",
                           code="model_not_found", param="model")
        if engine.task != task:
            raise ApiError(400, f"model {name!r} is a {engine.task} model, not a {task} model", code="wrong_model",
                           param="model")
        if alias is not None and isinstance(engine, RerankEngine) and alias not in engine.profiles:
            raise ApiError(404, f"model alias {model!r}: {name!r} has no profile {alias!r} (profiles: "
                           f"{', '.join(sorted(engine.profiles))})", code="model_not_found", param="model")
        if alias is not None and isinstance(engine, EmbedEngine):
            raise ApiError(404, f"model {model!r} not found: embedding models have no profiles", code="model_not_found",
                           param="model")
        return engine, alias
