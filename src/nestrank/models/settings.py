"""``nestrank.json``: the settings file a nestrank checkpoint directory carries, tagged by ``kind``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nestrank.errors import ConfigError

SETTINGS_FILE = "nestrank.json"


def read_settings(directory: str | Path, kind: str, *, model: str, what: str = "checkpoint") -> dict[str, Any] | None:
    """The ``nestrank.json`` of ``directory`` when it has one (else ``None``), checked to be of ``kind``.

    Errors say "cannot read the {what} settings" and "not a {model} checkpoint". Raises
    :class:`ConfigError` naming the file when it cannot be read, is not a JSON object, or was
    written for another kind of model.
    """
    file = Path(directory) / SETTINGS_FILE
    if not file.is_file():
        return None
    try:
        settings = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read the {what} settings ({exc}) (fix: restore or delete the file)") from None
    found = settings.get("kind") if isinstance(settings, dict) else None
    if found != kind:
        raise ConfigError(f"{file}: not a {model} checkpoint (its kind is {found!r}; fix: load it with the "
                          "class that wrote it)")
    return settings
