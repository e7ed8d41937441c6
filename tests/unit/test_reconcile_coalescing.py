"""Unit: triggers for an object whose pass is already waiting to start add no pass (real threads, no API)."""

from __future__ import annotations

import threading
import time

from peft_operator import reconcilers


def test_a_burst_of_triggers_during_a_pass_costs_one_more_pass_not_one_each() -> None:
    started, release = threading.Event(), threading.Event()
    runs: list[int] = []

    def work() -> None:
        runs.append(len(runs))
        if len(runs) == 1:  # the first pass holds the object while the burst arrives
            started.set()
            release.wait(10)

    first = threading.Thread(target=reconcilers._guarded, args=("Test", work, "ns", "burst"))
    first.start()
    assert started.wait(10)
    burst = [threading.Thread(target=reconcilers._guarded, args=("Test", work, "ns", "burst")) for _ in range(20)]
    for thread in burst:
        thread.start()
    # Every trigger but one returns at once; that one waits behind the running pass.
    deadline = time.monotonic() + 10
    while sum(t.is_alive() for t in burst) > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sum(t.is_alive() for t in burst) == 1
    release.set()
    for thread in [first, *burst]:
        thread.join(10)
    assert runs == [0, 1]  # the running pass and exactly one after it, which saw everything the burst changed
    # Another object is never held back by this one.
    reconcilers._guarded("Test", lambda: runs.append(-1), "ns", "other")
    assert runs[-1] == -1
