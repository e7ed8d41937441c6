"""Waiting for the rendezvous host of a multi-node run: the init container of every training pod.

torchrun's c10d rendezvous is hosted by the agent whose address the endpoint's name resolves to (pod 0 of
the Indexed Job, named through a headless Service). Until the Service's DNS record for pod 0 exists, pod 0
would not recognise itself as the host and the others could not reach it: torchrun would exit and the Job
would count a failure. So each pod first waits, bounded, until the name resolves.
"""

from __future__ import annotations

import socket
import sys
import time

POLL_SECONDS = 1.0


def await_host(host: str, timeout: float) -> int:
    """0 once `host` resolves, 1 after `timeout` seconds (with what the resolver said)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            addresses = sorted({str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)})
        except OSError as error:
            if time.monotonic() >= deadline:
                print(
                    f"The rendezvous host {host} did not resolve within {timeout:.0f}s ({error}); check that the "
                    "cluster DNS serves the training Job's headless Service and that pod 0 was scheduled",
                    file=sys.stderr,
                )
                return 1
            time.sleep(POLL_SECONDS)
            continue
        print(f"Rendezvous host {host} is {', '.join(addresses)}", file=sys.stderr)
        return 0
