"""Holding a pod's processes still (SIGSTOP from the host, which sees the node's PIDs) so a test can act on a
run at a moment of its choosing: a fast CPU trains a tiny model to the end in a second or two, so "after the
first checkpoint" would otherwise race the end of the run. A stopped process keeps the signals sent to it
pending until SIGCONT: the kubelet's SIGTERM is then the first thing it handles."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.kubelet import wait_for
from tests.support.real_node import RealNode


def container_id(pod: dict[str, Any]) -> str:
    """The ID runc knows the pod's first container by (its cgroup's name)."""
    return str(pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1])


def container_running(pod: dict[str, Any]) -> bool:
    """The pod's first container runs (its processes exist to be found and held)."""
    return "running" in (((pod["status"].get("containerStatuses") or [{}])[0]).get("state") or {})


def _proc_status(pid: int) -> dict[str, str]:
    return {k: v.strip() for k, v in (line.split(":", 1) for line in Path(f"/proc/{pid}/status").open())}


def state(pid: int) -> str:
    """R, S, T (stopped), Z..., or "gone"."""
    try:
        return _proc_status(pid)["State"][0]
    except FileNotFoundError:
        return "gone"


def sigterm_pending(pids: list[int]) -> bool:
    """SIGTERM is queued for one of `pids`."""
    for pid in pids:
        with contextlib.suppress(FileNotFoundError):
            status = _proc_status(pid)
            if (int(status["ShdPnd"], 16) | int(status["SigPnd"], 16)) & (1 << (signal.SIGTERM - 1)):
                return True
    return False


def _all_still(pids: list[int]) -> dict[int, str] | None:
    states = {pid: state(pid) for pid in pids}
    return states if set(states.values()) <= {"T", "Z", "gone"} else None


def pod_processes(node: RealNode, pods: list[dict[str, Any]]) -> list[int]:
    """Host PIDs of the pods' first containers' processes."""
    return [pid for pod in pods for pid in node.container_processes(container_id(pod))]


@contextlib.contextmanager
def frozen(processes: list[int]) -> Iterator[list[int]]:
    """`processes` stopped for the block, continued after it."""
    for pid in processes:
        os.kill(pid, signal.SIGSTOP)
    try:
        # SIGSTOP takes effect asynchronously; a zombie (an exited child not yet reaped) runs nothing either.
        states = wait_for("the processes stopped", lambda: _all_still(processes), timeout=30, interval=0.05)
        assert "T" in states.values(), f"every process ended before it could be stopped: {states}"
        yield processes
    finally:
        for pid in processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
