"""`peft-operator run`: the Kopf operator plus the trainers' progress endpoint, in one event loop."""

from __future__ import annotations

import asyncio
import logging

import kopf
from aiohttp import web

from . import handlers  # noqa: F401  (registers the handlers)
from .kube import load_api_client
from .metrics import serve_metrics
from .progress_server import progress_app
from .settings import OperatorSettings

log = logging.getLogger(__name__)


async def run_operator(settings: OperatorSettings, peering: str | None, liveness_port: int | None) -> None:
    client = load_api_client()
    serve_metrics(settings.metrics_port)
    log.info("Metrics on :%d/metrics", settings.metrics_port)
    runner = web.AppRunner(progress_app(client, settings))
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", settings.progress_port).start()
    log.info("Progress endpoint listening on :%d", settings.progress_port)
    try:
        await kopf.operator(
            clusterwide=not settings.watch_namespaces,
            namespaces=list(settings.watch_namespaces),
            # A peering name makes peering mandatory in Kopf: pass it only when asked for HA.
            standalone=peering is None,
            peering_name=peering,
            liveness_endpoint=f"http://0.0.0.0:{liveness_port}/healthz" if liveness_port else None,
            memo=kopf.Memo(api_client=client, settings=settings),
        )
    finally:
        await runner.cleanup()


def main(peering: str | None = None, liveness_port: int | None = None, verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("kubernetes").setLevel(logging.INFO)  # its DEBUG dumps whole response bodies
    asyncio.run(run_operator(OperatorSettings.from_env(), peering, liveness_port))
