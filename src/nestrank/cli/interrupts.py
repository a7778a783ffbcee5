"""SIGINT and SIGTERM on the command line: unwind like an error, then one line and exit 128 + signal.

While a command runs, both signals raise :class:`Interrupted` in the main thread, so every
``finally`` and ``except BaseException`` on the way up runs: atomic writes remove their
temporary files (:mod:`nestrank.files`) and journals keep what is finished. A second
signal during that unwinding ends the process at once (the next run removes what it left).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The process got SIGINT or SIGTERM while a command ran.

    A :class:`BaseException`, like :class:`KeyboardInterrupt`, so ``except Exception``
    blocks let it through; not a ``KeyboardInterrupt``, which Typer would turn into a silent
    exit 130 for both signals.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(self.name)

    @property
    def exit_code(self) -> int:
        """The shell's status for a process ended by this signal: 130 (SIGINT), 143 (SIGTERM)."""
        return 128 + self.signum


@contextlib.contextmanager
def raising_on_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted` (main thread only; a no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}

    def interrupt(signum: int, frame: object) -> None:
        for other in SIGNALS:  # a second signal while unwinding ends the process at once
            signal.signal(other, signal.SIG_DFL)
        raise Interrupted(signum)

    for signum in SIGNALS:
        signal.signal(signum, interrupt)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
