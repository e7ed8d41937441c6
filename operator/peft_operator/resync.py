"""Periodic, level-triggered re-checks: each controller in `reconcilers.CONTROLLERS` says how often and
which of its objects (`resync_seconds`, `wants_resync`); this loop only lists and calls."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from kubernetes.client import ApiClient, CustomObjectsApi

from .api import GROUP, VERSION
from .reconcilers import CONTROLLERS, Controller
from .settings import OperatorSettings

log = logging.getLogger(__name__)


def _list(client: ApiClient, plural: str, namespaces: tuple[str, ...]) -> list[dict[str, Any]]:
    api = CustomObjectsApi(client)
    if not namespaces:
        return api.list_cluster_custom_object(GROUP, VERSION, plural)["items"]  # type: ignore[no-any-return]
    items: list[dict[str, Any]] = []
    for namespace in namespaces:
        items += api.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)["items"]
    return items


async def _pass(client: ApiClient, settings: OperatorSettings, controller: Controller) -> None:
    plural = controller.model.PLURAL
    items = await asyncio.to_thread(_list, client, plural, settings.watch_namespaces)
    for item in filter(controller.wants_resync, items):
        meta = item["metadata"]
        try:
            await asyncio.to_thread(controller.reconcile, client, settings, meta["namespace"], meta["name"])
        except Exception as error:  # one object's trouble never stops the others' re-check
            log.warning("Re-check of %s %s/%s failed: %s", plural, meta["namespace"], meta["name"], error)
    if controller.sweep is not None:
        try:
            await asyncio.to_thread(controller.sweep, client, settings.watch_namespaces, items)
        except Exception as error:
            log.warning("Tidying up after deleted %s failed: %s", plural, error)


async def _every(client: ApiClient, settings: OperatorSettings, controller: Controller) -> None:
    while True:
        await asyncio.sleep(controller.resync_seconds)
        try:
            await _pass(client, settings, controller)
        except Exception as error:
            log.warning("Listing %s for the re-check failed: %s", controller.model.PLURAL, error)


async def resync_forever(client: ApiClient, settings: OperatorSettings) -> None:
    await asyncio.gather(*(_every(client, settings, controller) for controller in CONTROLLERS))
