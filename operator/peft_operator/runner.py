"""`peft-operator run`: Kopf's watches, the re-check loop, the trainers' progress endpoint and metrics,
in one event loop. With leader election on, a replica only watches and reconciles while it holds the
Lease; every replica serves progress and metrics."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys

import kopf
from aiohttp import web
from kubernetes.client import ApiClient

from . import handlers  # noqa: F401  (registers the handlers)
from .finetunejob.progress_server import progress_app
from .kube import load_api_client
from .leader import LeaseConfig, release, try_acquire
from .metrics import serve_metrics
from .resync import resync_forever
from .settings import OperatorSettings

log = logging.getLogger(__name__)


class LeadershipLostError(RuntimeError):
    """Another replica holds the Lease now; this one must stop acting at once."""


async def _acquire(client: ApiClient, config: LeaseConfig) -> None:
    while not await asyncio.to_thread(try_acquire, client, config):
        await asyncio.sleep(config.renew_seconds)
    log.info("Acquired Lease %s/%s as %s; acting as the leader", config.namespace, config.name, config.identity)


async def _keep(client: ApiClient, config: LeaseConfig) -> None:
    while True:
        await asyncio.sleep(config.renew_seconds)
        if not await asyncio.to_thread(try_acquire, client, config):
            raise LeadershipLostError(f"Lost Lease {config.namespace}/{config.name}")


def replica_identity() -> str:
    """Who this replica is, for the Lease and for Kopf. Never from the passwd database: the image's user
    (65532) has no entry there, and Kopf's default (`getpass.getuser()`) crashes on that."""
    return f"{socket.gethostname()}-{os.getpid()}"


async def run_operator(settings: OperatorSettings) -> None:
    client = load_api_client()
    serve_metrics(settings.metrics_port)
    runner = web.AppRunner(progress_app(client, settings))
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", settings.progress_port).start()
    log.info("Progress endpoint on :%d, metrics on :%d", settings.progress_port, settings.metrics_port)
    duties = []
    lease: LeaseConfig | None = None
    identity = replica_identity()
    if settings.leader_election_namespace:
        lease = LeaseConfig(settings.leader_election_namespace, settings.lease_name, identity)
        await _acquire(client, lease)
        duties.append(_keep(client, lease))
    duties += [
        kopf.operator(
            clusterwide=not settings.watch_namespaces,
            namespaces=list(settings.watch_namespaces),
            standalone=True,  # one acting replica is the Lease's job, not Kopf peering's
            identity=identity,  # type: ignore[arg-type]  # kopf.Identity (a NewType of str) is not exported
            memo=kopf.Memo(api_client=client, settings=settings),
        ),
        resync_forever(client, settings),
    ]
    try:
        await asyncio.gather(*duties)
    finally:
        if lease is not None:
            await asyncio.to_thread(release, client, lease)
        await runner.cleanup()


def main(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("kubernetes").setLevel(logging.INFO)  # its DEBUG dumps whole response bodies
    try:
        asyncio.run(run_operator(OperatorSettings.from_env()))
    except LeadershipLostError as error:
        log.error("%s; exiting so that a fresh start waits for the Lease", error)
        sys.exit(1)
