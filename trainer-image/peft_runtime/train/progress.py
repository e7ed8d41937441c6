"""Progress reporting: every TrainerEvent goes to each sink; no sink can stop training.

Sinks: JSON lines on stdout; JSON lines appended to plan.progress.file; HTTP POST to plan.progress.url
(bearer token from the environment, progress at most once per intervalSeconds, bounded retries, on a
background thread); the final event to plan.progress.terminationLog (Kubernetes: /dev/termination-log);
a tqdm bar on stderr when it is a terminal.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Protocol

from peft_operator.api.events import (
    CompletedEvent,
    FailedEvent,
    FinalEvent,
    PreflightEvent,
    ProgressEvent,
    TrainerEvent,
)
from peft_operator.api.finetunejob import DatasetReport
from peft_operator.api.plan import ProgressSinkConfig

from .data import count_of

log = logging.getLogger(__name__)

TERMINATION_LOG_LIMIT = 4096  # bytes Kubernetes keeps from /dev/termination-log


def format_duration(seconds: float) -> str:
    """12m30s, 1h2m, 45s."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def to_json(event: TrainerEvent) -> str:
    return json.dumps(event.to_wire(), separators=(",", ":"))


def compact_final(event: FinalEvent) -> str:
    """The final event as one line under TERMINATION_LOG_LIMIT bytes (a long message is shortened)."""
    line = to_json(event)
    while len(line.encode()) >= TERMINATION_LOG_LIMIT and isinstance(event, FailedEvent):
        excess = len(line.encode()) - TERMINATION_LOG_LIMIT + 16
        event = event.model_copy(update={"message": event.message[: max(0, len(event.message) - excess)] + "..."})
        line = to_json(event)
    return line


class Sink(Protocol):
    def emit(self, event: TrainerEvent) -> None: ...

    def close(self) -> None: ...


class StdoutSink:
    def __init__(self, bar_active: bool = False):
        self.bar_active = bar_active

    def emit(self, event: TrainerEvent) -> None:
        line = to_json(event)
        if self.bar_active:
            from tqdm import tqdm

            tqdm.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def close(self) -> None:
        sys.stdout.flush()


class FileSink:
    def __init__(self, path: str):
        self.path = path

    def emit(self, event: TrainerEvent) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(to_json(event) + "\n")

    def close(self) -> None:
        pass


class TerminationLogSink:
    def __init__(self, path: str):
        self.path = path

    def emit(self, event: TrainerEvent) -> None:
        if isinstance(event, FinalEvent):
            with open(self.path, "w", encoding="utf-8") as handle:
                handle.write(compact_final(event))

    def close(self) -> None:
        pass


def preflight_summary(report: DatasetReport) -> list[str]:
    """The dataset report as a person at a terminal reads it: one line of counts, one line per warning."""
    lines = [
        f"Dataset: {count_of(report.rows, 'row')}, {report.usable_rows} usable, {count_of(report.tokens, 'token')}, "
        f"{count_of(report.duplicates, 'duplicate')}, {report.truncated_fraction:.0%} truncated"
    ]
    return lines + [f"  warning: {warning}" for warning in report.warnings]


class ProgressBarSink:
    def __init__(self) -> None:
        self.bar: Any = None

    def emit(self, event: TrainerEvent) -> None:
        if isinstance(event, PreflightEvent):
            for line in preflight_summary(event.dataset):
                print(line, file=sys.stderr, flush=True)
        elif isinstance(event, ProgressEvent):
            from tqdm import tqdm

            progress = event.progress
            if self.bar is None:
                self.bar = tqdm(total=progress.total_steps, initial=progress.step - 1, unit="step", file=sys.stderr)
            self.bar.update(progress.step - self.bar.n)
            postfix = {"loss": f"{progress.loss:.4f}" if progress.loss is not None else "-"}
            if progress.eval_loss is not None:
                postfix["eval"] = f"{progress.eval_loss:.4f}"
            if progress.tokens_per_second is not None:
                postfix["tok/s"] = f"{progress.tokens_per_second:.0f}"
            self.bar.set_postfix(postfix, refresh=False)
        elif isinstance(event, CompletedEvent | FailedEvent):
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class HttpSink:
    """POSTs events as JSON from a background thread.

    Progress events are coalesced (only the newest unsent one matters) and sent at most once per
    `interval_seconds`; preflight, completed and failed are always sent, in order. A failed POST is retried
    `attempts` times with backoff, then logged and dropped: the operator also reads the termination log."""

    def __init__(
        self, url: str, token: str | None, interval_seconds: float, *, timeout: float = 10.0, attempts: int = 3
    ):
        self.url = url
        self.token = token
        self.interval = interval_seconds
        self.timeout = timeout
        self.attempts = attempts
        self._queue: list[TrainerEvent] = []
        self._cond = threading.Condition()
        self._closing = False
        self._last_progress = float("-inf")
        self._thread = threading.Thread(target=self._run, name="progress-http", daemon=True)
        self._thread.start()

    def emit(self, event: TrainerEvent) -> None:
        with self._cond:
            if isinstance(event, ProgressEvent) and self._queue and isinstance(self._queue[-1], ProgressEvent):
                self._queue[-1] = event
            else:
                self._queue.append(event)
            self._cond.notify()

    def _next(self) -> TrainerEvent | None:
        with self._cond:
            while True:
                if self._queue:
                    wait = self._last_progress + self.interval - time.monotonic()
                    if isinstance(self._queue[0], ProgressEvent) and wait > 0 and not self._closing:
                        self._cond.wait(wait)
                        continue
                    return self._queue.pop(0)
                if self._closing:
                    return None
                self._cond.wait()

    def _run(self) -> None:
        while (event := self._next()) is not None:
            if isinstance(event, ProgressEvent):
                self._last_progress = time.monotonic()
            self._post(event)

    def _post(self, event: TrainerEvent) -> None:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        body = to_json(event).encode()
        for attempt in range(1, self.attempts + 1):
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    response.read()
                return
            except urllib.error.HTTPError as error:
                retry = error.code >= 500 or error.code == 429
                log.warning("Progress POST to %s answered %s (attempt %d)", self.url, error.code, attempt)
                if not retry:
                    return
            except (OSError, ValueError) as error:
                log.warning("Progress POST to %s failed: %s (attempt %d)", self.url, error, attempt)
            if attempt < self.attempts:
                time.sleep(min(0.5 * 2 ** (attempt - 1), 5.0))
        log.warning("Dropped %s event after %d attempts", event.event, self.attempts)

    def close(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)


class Reporter:
    """Fans events out to the sinks; a sink that raises is logged and skipped, never fatal."""

    def __init__(self, sinks: list[Any]):
        self.sinks = sinks

    @classmethod
    def for_plan(cls, config: ProgressSinkConfig, *, stdout: bool = True, progress_bar: bool = False) -> Reporter:
        sinks: list[Any] = []
        if progress_bar:
            sinks.append(ProgressBarSink())
        if stdout:
            sinks.append(StdoutSink(bar_active=progress_bar))
        if config.file:
            sinks.append(FileSink(config.file))
        if config.termination_log:
            sinks.append(TerminationLogSink(config.termination_log))
        if config.url:
            token = os.environ.get(config.token_env)
            if not token:
                log.warning(
                    "No bearer token in $%s; progress POSTs to %s go unauthenticated", config.token_env, config.url
                )
            sinks.append(HttpSink(config.url, token, config.interval_seconds))
        return cls(sinks)

    def emit(self, event: TrainerEvent) -> None:
        for sink in self.sinks:
            try:
                sink.emit(event)
            except Exception as error:
                log.warning("Progress sink %s failed: %s", type(sink).__name__, error)

    def note(self, message: str) -> None:
        """A human line on stderr (kept off stdout, which carries only JSON lines)."""
        if any(isinstance(s, ProgressBarSink) for s in self.sinks):
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as error:
                log.warning("Progress sink %s did not close: %s", type(sink).__name__, error)
