"""The batching scheduler: one worker thread that turns concurrent requests into shared forward passes.

Policy:
- idle: the first request opens a short window (`batch_window_s`); whatever arrives in it, up to
  `max_batch_size` rows and `max_prefill_tokens` prompt tokens, is prefilled together;
- running: between two steps, waiting requests join the running batch (their prompts are prefilled and
  their KV cache merged in), as long as there is room; requests for any adapter mix freely;
- a request cancelled by its client is dropped at the next step.
The worker holds the model lock for one forward pass at a time, so adapter loads slip in between steps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from ..common.errors import ServingError
from .generation import Batch, BatchRunner, GenerationRequest, Row
from .metrics import ServingMetrics

log = logging.getLogger(__name__)


class BatchScheduler:
    def __init__(
        self,
        runner: BatchRunner,
        metrics: ServingMetrics,
        *,
        max_batch_size: int = 64,
        batch_window_s: float = 0.005,
        max_prefill_tokens: int = 8192,
    ) -> None:
        self.runner = runner
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.batch_window_s = batch_window_s
        self.max_prefill_tokens = max_prefill_tokens
        self._pending: deque[GenerationRequest] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="batch-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=30)

    def submit(self, request: GenerationRequest) -> None:
        """Queue a request (any thread); its events go to request.emit from the worker thread."""
        with self._wake:
            self._pending.append(request)
            self.metrics.queue_depth.set(len(self._pending))
            self._wake.notify()

    # ------------------------------------------------------------------------------------ worker

    def _run(self) -> None:
        batch: Batch | None = None
        while True:
            joining = self._take(running=batch)
            if joining is None:
                return
            try:
                batch = self._admit(batch, joining)
                if batch is not None:
                    self.metrics.batch_rows.observe(len(batch.rows))
                    batch = self.runner.step(batch)
            except Exception as error:  # never let the worker die: fail the rows in flight and go on
                log.exception("Generation step failed")
                in_flight = {id(r): r for r in (batch.rows if batch is not None else []) + joining if not r.done}
                failure = error if isinstance(error, ServingError) else ServingError(f"generation failed: {error}")
                self.runner.fail(list(in_flight.values()), failure)
                batch = None

    def _take(self, running: Batch | None) -> list[Row] | None:
        """Requests to start now (possibly none while a batch runs); None when stopping."""
        with self._wake:
            if running is None:
                while not self._pending and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return None
                deadline = self._pending[0].submitted_at + self.batch_window_s
                while len(self._pending) < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
                    self._wake.wait(left)
            elif self._stopping:
                return None
            if running is not None and not self.runner.can_merge:
                return []
            room = self.max_batch_size - (len(running.rows) if running else 0)
            taken: list[GenerationRequest] = []
            longest = 0
            while self._pending and len(taken) < room:
                longest = max(longest, len(self._pending[0].prompt_ids))
                if taken and longest * (len(taken) + 1) > self.max_prefill_tokens:
                    break
                taken.append(self._pending.popleft())
            self.metrics.queue_depth.set(len(self._pending))
        return [row for request in taken if (row := self.runner.admit(request)) is not None]

    def _admit(self, batch: Batch | None, joining: list[Row]) -> Batch | None:
        if not joining:
            return batch
        prefilled = self.runner.prefill(joining)
        if prefilled is None:
            return batch
        if batch is None:
            return prefilled
        return self.runner.merge(batch, prefilled)
