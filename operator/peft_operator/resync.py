"""Periodic, level-triggered re-checks: unfinished FineTuneJobs every 30 s (a missed event heals), every
AdapterDeployment every 10 s (an engine that lost its adapters after a restart gets them back)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from kubernetes.client import ApiClient, CustomObjectsApi

from . import reconcilers
from .api import GROUP, VERSION
from .finetunejob.reconcile import needs_deploy
from .finetunejob.status import TERMINAL_PHASES
from .settings import OperatorSettings

log = logging.getLogger(__name__)
FINETUNEJOB_RESYNC_SECONDS = 30.0
ADAPTER_RECHECK_SECONDS = 10.0
_TERMINAL = {p.value for p in TERMINAL_PHASES}


def _list(client: ApiClient, plural: str, namespaces: tuple[str, ...]) -> list[dict[str, Any]]:
    api = CustomObjectsApi(client)
    if not namespaces:
        return api.list_cluster_custom_object(GROUP, VERSION, plural)["items"]  # type: ignore[no-any-return]
    items: list[dict[str, Any]] = []
    for namespace in namespaces:
        items += api.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)["items"]
    return items


def unfinished_finetunejobs(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [i for i in items if (i.get("status") or {}).get("phase") not in _TERMINAL or needs_deploy(i)]


async def _pass(client: ApiClient, settings: OperatorSettings, plural: str, reconcile: Any) -> None:
    items = await asyncio.to_thread(_list, client, plural, settings.watch_namespaces)
    if plural == "finetunejobs":
        items = unfinished_finetunejobs(items)
    for item in items:
        meta = item["metadata"]
        try:
            await asyncio.to_thread(reconcile, client, settings, meta["namespace"], meta["name"])
        except Exception as error:  # one object's trouble never stops the others' re-check
            log.warning("Re-check of %s %s/%s failed: %s", plural, meta["namespace"], meta["name"], error)


async def _every(seconds: float, client: ApiClient, settings: OperatorSettings, plural: str, reconcile: Any) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await _pass(client, settings, plural, reconcile)
        except Exception as error:
            log.warning("Listing %s for the re-check failed: %s", plural, error)


async def resync_forever(client: ApiClient, settings: OperatorSettings) -> None:
    await asyncio.gather(
        _every(FINETUNEJOB_RESYNC_SECONDS, client, settings, "finetunejobs", reconcilers.finetunejob),
        _every(ADAPTER_RECHECK_SECONDS, client, settings, "adapterdeployments", reconcilers.adapterdeployment),
    )
