"""Whether a model can load here, checked without loading it; hub ids without network fail in seconds.

:func:`check_model_name` is what commands call before any expensive work: an unknown preset,
a missing path or an unavailable hub id raises :class:`~nestrank.errors.ConfigError`.

huggingface_hub retries a request that cannot connect five times with back-off (about 23 s
per file; a model asks for several, so over a minute), then transformers reports a generic
error. :func:`check_hub_access` probes the hub once per process with one
:data:`HUB_TIMEOUT`-second connection attempt before anything is fetched: a model in the
local Hugging Face cache then loads from there in offline mode, and any other hub id fails
at once, naming the fix. ``HF_HUB_OFFLINE=1`` skips the probe (cached models only).
"""

from __future__ import annotations

import functools
import os

from nestrank.errors import ConfigError

__all__ = ["HUB_TIMEOUT", "check_hub_access"]

#: Seconds a connection to the Hugging Face hub (or the HTTPS proxy) may take before the hub counts as unreachable.
HUB_TIMEOUT = 3.0


def check_hub_access(hub_id: str) -> None:
    """Make sure ``hub_id`` can load: from the hub, or from the local cache when the hub cannot be reached.

    Unreachable hub (no connection within :data:`HUB_TIMEOUT` s) and the repo cached: switch
    this process (and its children) to Hugging Face offline mode, so loading uses the cache
    without retries. Not cached, or offline mode set and not cached: :class:`ConfigError`.
    """
    from huggingface_hub import constants

    cached = _hub_cached(hub_id)
    if cached:
        if not constants.is_offline_mode() and not _hub_reachable(constants.ENDPOINT):
            os.environ["HF_HUB_OFFLINE"] = "1"  # children (workers, Ray actors) read it at import
            constants.HF_HUB_OFFLINE = True  # this process: huggingface_hub and transformers read it per call
        return
    if constants.is_offline_mode():
        why = "HF_HUB_OFFLINE is set"
    elif _hub_reachable(constants.ENDPOINT):
        return
    else:
        why = f"the Hugging Face hub ({constants.ENDPOINT}) cannot be reached from this machine"
    raise ConfigError(f"model {hub_id!r} is a hub id, but {why} and it is not in the local cache "
                      f"({constants.HF_HUB_CACHE}) (fix: pass a local model directory or a preset "
                      f"(minilm-l6, smollm2-135m), or download it where the hub is reachable: "
                      f"`hf download {hub_id}`, and copy the cache or the directory here)")


def _hub_cached(hub_id: str) -> bool:
    """Whether the local Hugging Face cache holds ``hub_id``'s ``config.json`` or ``adapter_config.json``."""
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(hub_id, name), str) for name in ("config.json", "adapter_config.json"))


def _hub_reachable(endpoint: str) -> bool:
    """Whether a TCP connection to ``endpoint`` (or the HTTPS proxy that reaches it) opens within :data:`HUB_TIMEOUT` s."""
    import urllib.parse
    import urllib.request

    url = urllib.parse.urlsplit(endpoint)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxied = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxied.hostname or "", proxied.port or 8080
    return _connects(host, port, HUB_TIMEOUT)


@functools.cache
def _connects(host: str, port: int, timeout: float) -> bool:
    """One TCP connection attempt, name lookup included, bounded by ``timeout`` (cached per process)."""
    import socket
    import threading

    outcome: list[bool] = []

    def attempt() -> None:  # in a thread: name lookup has no timeout of its own
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(True)
        except OSError:
            outcome.append(False)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(outcome and outcome[0])
