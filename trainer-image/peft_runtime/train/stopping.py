"""Stopping on request: SIGTERM (pod deletion, Kueue preemption, node drain) or Ctrl-C in local mode.

The first signal lets the current step end (or drops an unfinished one), a checkpoint is written, and the
process exits with 128 + the signal number, so the next start of the Job resumes exactly there instead of
at the last periodic checkpoint. A second signal acts at once (the previous handler is back by then).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    def __init__(self) -> None:
        self.signal: signal.Signals | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def _handle(self, signum: int, _: FrameType | None) -> None:
        self.signal = signal.Signals(signum)
        signal.signal(signum, self._previous[signum])  # type: ignore[arg-type]


class Interrupted(Exception):
    """The run stopped on a signal after saving its state; a restart resumes it."""

    def __init__(self, stop: signal.Signals, message: str):
        super().__init__(message)
        self.message = message
        self.exit_code = 128 + int(stop)


@contextmanager
def stop_on_signal() -> Iterator[StopRequest]:
    """A StopRequest set by SIGTERM/SIGINT while the block runs (handlers only work in the main thread)."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    stop._previous = {s: signal.signal(s, stop._handle) for s in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for signum, handler in stop._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
