"""Ray Serve deployment of the same app: N stateless replicas behind Ray's HTTP proxy.

Each replica builds the app from the settings (:func:`nestrank.serve.create_app`) and loads its
models before it reports healthy, so Ray routes traffic only to warm replicas; batching, cost
control and the error contract are per replica, exactly as in one uvicorn process.
"""

from __future__ import annotations

import os
from typing import Any

from nestrank.serve.settings import ServeSettings

#: Serve kills its HTTP proxy after 3 readiness checks of this many seconds (Ray's default: 5); on a
#: busy 2-core machine the proxy's imports took longer and ``serve.start`` failed with ``ActorDiedError``.
PROXY_READY_TIMEOUT_ENV = "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"
PROXY_READY_TIMEOUT_S = "30"


def deployment(settings: ServeSettings, replicas: int = 1, num_cpus: float = 1.0) -> Any:
    """A Ray Serve deployment (not yet bound) serving ``settings`` with ``replicas`` replicas."""
    from ray import serve

    def build_app():
        from nestrank.serve.app import create_app
        from nestrank.serve.state import ServerState

        return create_app(settings, ServerState(settings).load())

    return serve.deployment(serve.ingress(build_app)(), name="nestrank", num_replicas=replicas,
                            ray_actor_options={"num_cpus": num_cpus})


def start_ray(host: str = "127.0.0.1", port: int = 8080, **init: Any) -> None:
    """Start a local Ray (or join ``RAY_ADDRESS``; ``init`` goes to ``ray.init``) and Serve's HTTP proxy on
    ``host:port``, giving the proxy :data:`PROXY_READY_TIMEOUT_S` per readiness check unless the environment
    sets :data:`PROXY_READY_TIMEOUT_ENV` (a local Ray's processes inherit it)."""
    import ray
    from ray import serve

    os.environ.setdefault(PROXY_READY_TIMEOUT_ENV, PROXY_READY_TIMEOUT_S)
    ray.init(include_dashboard=False, ignore_reinit_error=True, **init)
    serve.start(http_options={"host": host, "port": port})


def run_ray(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8080, replicas: int = 1,
            num_cpus: float = 1.0) -> None:
    """Start a local Ray (or join ``RAY_ADDRESS``), deploy, and block until interrupted."""
    from ray import serve

    start_ray(host, port)
    serve.run(deployment(settings, replicas, num_cpus).bind(), name="nestrank", route_prefix="/", blocking=True)
