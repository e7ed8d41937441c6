"""HTTP sink for trainer events: POST /v1/progress/{namespace}/{name} with the job's bearer token.

The operator turns each event into FineTuneJob status: preflight -> status.dataset, progress ->
status.progress (never backwards), completed -> status.adapter. The Job's own outcome still decides
the phase; this only makes a running job visible."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from kubernetes.client import ApiClient, ApiException
from pydantic import TypeAdapter, ValidationError

from .. import kube
from ..api import FineTuneJob, FineTuneJobStatus
from ..api.events import (
    CompletedEvent,
    FailedEvent,
    PreflightEvent,
    PreflightPassedEvent,
    ProgressEvent,
    TrainerEvent,
)
from ..settings import OperatorSettings
from .progress_token import token_is_valid
from .status import TERMINAL_PHASES

log = logging.getLogger(__name__)
_EVENTS: TypeAdapter[TrainerEvent] = TypeAdapter(TrainerEvent)
MAX_BODY_BYTES = 64 * 1024


def status_patch(current: FineTuneJobStatus, event: TrainerEvent) -> dict[str, Any] | None:
    """The .status fields an event changes, or None when it changes nothing (stale or terminal)."""
    if current.phase in TERMINAL_PHASES:
        return None
    if isinstance(event, PreflightEvent):
        return {"dataset": event.dataset.to_wire()}
    if isinstance(event, ProgressEvent):
        if current.progress is not None and event.progress.step < current.progress.step:
            return None  # a late or resumed-from-older-checkpoint report never moves progress backwards
        return {"progress": event.progress.to_wire()}
    if isinstance(event, CompletedEvent):
        return {"adapter": event.adapter.to_wire(), "progress": event.progress.to_wire()}
    assert isinstance(event, FailedEvent | PreflightPassedEvent)
    return None  # outcomes reach status through the Job and the pod's termination message


def _deliver(client: ApiClient, settings: OperatorSettings, namespace: str, name: str, token: str, raw: bytes) -> int:
    body = kube.get_custom(client, FineTuneJob.PLURAL, namespace, name)
    if body is None:
        return 404
    if not settings.progress_key or not token_is_valid(
        settings.progress_key, namespace, name, body["metadata"]["uid"], token
    ):
        return 401
    try:
        event = _EVENTS.validate_json(raw)
    except ValidationError:
        return 400
    patch = status_patch(FineTuneJobStatus.model_validate(body.get("status") or {}), event)
    if patch is None:
        return 202
    try:
        kube.patch_status(client, FineTuneJob.PLURAL, namespace, name, patch, body["metadata"]["resourceVersion"])
    except ApiException as error:
        if error.status == 409:
            return 409  # the trainer retries; the next report carries newer numbers anyway
        raise
    return 204


def progress_app(client: ApiClient, settings: OperatorSettings) -> web.Application:
    async def receive(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return web.json_response({"error": "missing bearer token"}, status=401)
        raw = await request.read()
        code = await asyncio.to_thread(
            _deliver,
            client,
            settings,
            request.match_info["namespace"],
            request.match_info["name"],
            auth.removeprefix("Bearer "),
            raw,
        )
        return web.Response(status=code)

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/v1/progress/{namespace}/{name}", receive)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/healthz", healthz)
    return app
