"""Stop on SIGINT or SIGTERM after the current update, not in the middle of one."""

from __future__ import annotations

import signal


class StopSignal:
    """SIGINT and SIGTERM set `received`, which the loop checks after each update.

    Installed explicitly: a job started in the background inherits SIGINT as ignored, and Python's
    KeyboardInterrupt would then never come.
    """

    def __init__(self) -> None:
        self.received: int | None = None

    def __enter__(self) -> None:
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum: int, frame) -> None:
        self.received = signum

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    @property
    def name(self) -> str:
        return signal.Signals(self.received or signal.SIGTERM).name
