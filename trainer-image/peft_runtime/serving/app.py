"""HTTP routes of the built-in server: thin handlers over `Engine`; errors become JSON at the edge.

POST /v1/completions, /v1/chat/completions   OpenAI-compatible (stream: true gives SSE chunks + [DONE])
GET  /v1/models                               the base model and the adapters (with parent = base)
POST /v1/load_lora_adapter                    {"lora_name", "lora_path"}: vLLM's runtime LoRA protocol
POST /v1/unload_lora_adapter                  {"lora_name"}
GET  /health, GET /metrics
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from aiohttp import web

from ..common.http_edge import TokenSource, error_middleware, json_response, read_body
from .engine import Engine, Submission
from .generation import Finished, TextDelta
from .protocol import (
    AdminResult,
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    ErrorResponse,
    LoadLoRAAdapterRequest,
    ModelCard,
    ModelList,
    UnloadLoRAAdapterRequest,
    Usage,
)

ENGINE = web.AppKey("engine", Engine)
TOKEN = web.AppKey("token", TokenSource)
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


def create_app(engine: Engine, token: TokenSource) -> web.Application:
    app = web.Application(middlewares=[error_middleware(ErrorResponse.of)], client_max_size=32 * 1024 * 1024)
    app[ENGINE] = engine
    app[TOKEN] = token
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/load_lora_adapter", load_lora_adapter)
    app.router.add_post("/v1/unload_lora_adapter", unload_lora_adapter)
    return app


async def health(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    return web.json_response({"status": "ok", "model": engine.base.served_name, "adapters": engine.registry.count()})


async def metrics(request: web.Request) -> web.Response:
    body = request.app[ENGINE].metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def models(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    base = engine.base
    cards = [ModelCard(id=base.served_name, root=base.root, max_model_len=engine.max_model_len)]
    cards += [
        ModelCard(id=a.name, root=str(a.path), parent=base.served_name, created=int(a.loaded_at), resident=a.resident)
        for a in engine.registry.adapters()
    ]
    return json_response(ModelList(data=cards))


async def completions(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    body = CompletionRequest.model_validate(await read_body(request))
    adapter = engine.registry.check_model(body.model)
    async with engine.holding(adapter):  # an evicted adapter is loaded back first
        prompts = [engine.encode(p) for p in body.prompts()]
        params = [
            engine.sampling(len(p), max_tokens=body.max_tokens, default=COMPLETIONS_DEFAULT_MAX_TOKENS, fields=body)
            for p in prompts
        ]
        label = body.model or engine.base.served_name
        submission = Submission(engine, adapter, label, prompts, params).start()
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return await _stream(request, submission, _completion_chunks(submission, label, include_usage))
        choices = await submission.collect()
        return json_response(
            CompletionResponse(
                model=label,
                choices=[
                    CompletionChoice(index=i, text=c.text, finish_reason=c.finish_reason) for i, c in enumerate(choices)
                ],
                usage=_usage(submission),
            )
        )


async def chat_completions(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    body = ChatCompletionRequest.model_validate(await read_body(request))
    adapter = engine.registry.check_model(body.model)
    async with engine.holding(adapter):  # an evicted adapter is loaded back first
        prompt = engine.encode_chat(body.messages)
        params = engine.sampling(
            len(prompt), max_tokens=body.token_limit(), default=engine.config.default_max_tokens, fields=body
        )
        label = body.model or engine.base.served_name
        submission = Submission(engine, adapter, label, [prompt], [params]).start()
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return await _stream(request, submission, _chat_chunks(submission, label, include_usage))
        [choice] = await submission.collect()
        return json_response(
            ChatCompletionResponse(
                model=label,
                choices=[
                    ChatChoice(
                        index=0, message=AssistantMessage(content=choice.text), finish_reason=choice.finish_reason
                    )
                ],
                usage=_usage(submission),
            )
        )


async def load_lora_adapter(request: web.Request) -> web.Response:
    request.app[TOKEN].check(request)
    engine = request.app[ENGINE]
    body = LoadLoRAAdapterRequest.model_validate(await read_body(request))
    try:
        outcome = await asyncio.to_thread(
            engine.registry.load, body.lora_name, Path(body.lora_path), pinned=body.pinned
        )
    except Exception:
        engine.metrics.adapter_loads.labels("error").inc()
        raise
    engine.metrics.adapter_loads.labels(outcome.status).inc()
    engine.metrics.adapter_load_seconds.observe(outcome.seconds)
    verb = {"loaded": "added", "replaced": "replaced", "unchanged": "already loaded from that path"}[outcome.status]
    return json_response(
        AdminResult(
            lora_name=body.lora_name,
            status=outcome.status,
            message=f"Success: LoRA adapter '{body.lora_name}' {verb}.",
            lora_path=str(outcome.adapter.path),
            load_seconds=round(outcome.seconds, 4),
        )
    )


async def unload_lora_adapter(request: web.Request) -> web.Response:
    request.app[TOKEN].check(request)
    engine = request.app[ENGINE]
    body = UnloadLoRAAdapterRequest.model_validate(await read_body(request))
    adapter = await asyncio.to_thread(engine.registry.unload, body.lora_name)
    return json_response(
        AdminResult(
            lora_name=body.lora_name,
            status="unloaded",
            message=f"Success: LoRA adapter '{body.lora_name}' removed.",
            lora_path=str(adapter.path),
        )
    )


# ---------------------------------------------------------------------------------------- streaming


async def _stream(
    request: web.Request, submission: Submission, chunks: AsyncGenerator[dict[str, Any], None]
) -> web.StreamResponse:
    """Server-sent events. The first chunk is awaited before the headers go out, so an error that happens
    before any text (e.g. the adapter was unloaded meanwhile) is still an ordinary HTTP error."""
    try:
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            first = None
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        if first is not None:
            await response.write(_sse(first))
        try:
            async for chunk in chunks:
                await response.write(_sse(chunk))
        except Exception as error:  # after the headers: report in-band, as vLLM does
            status, reason = getattr(error, "status", 500), str(getattr(error, "reason", "InternalError"))
            await response.write(_sse(ErrorResponse.of(status, reason, str(error))))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
    finally:  # a client that went away: stop generating for it (a no-op for finished requests)
        submission.cancel()
        await chunks.aclose()


def _sse(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _completion_chunks(
    submission: Submission, label: str, include_usage: bool
) -> AsyncGenerator[dict[str, Any], None]:
    chunk_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(index: int, text: str, finish: str | None) -> dict[str, Any]:
        return CompletionResponse(
            id=chunk_id,
            created=created,
            model=label,
            choices=[CompletionChoice(index=index, text=text, finish_reason=finish)],
        ).model_dump(exclude={"usage"})

    async for index, event in submission.events():
        if isinstance(event, TextDelta):
            yield chunk(index, event.text, None)
        elif isinstance(event, Finished):
            yield chunk(index, "", event.reason)
    if include_usage:
        yield CompletionResponse(
            id=chunk_id, created=created, model=label, choices=[], usage=_usage(submission)
        ).model_dump()


async def _chat_chunks(submission: Submission, label: str, include_usage: bool) -> AsyncGenerator[dict[str, Any], None]:
    chunk_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(delta: DeltaMessage, finish: str | None) -> dict[str, Any]:
        body = ChatCompletionChunk(
            id=chunk_id,
            created=created,
            model=label,
            choices=[ChatChunkChoice(index=0, delta=delta, finish_reason=finish)],
        ).model_dump(exclude={"usage"})
        body["choices"][0]["delta"] = delta.model_dump(exclude_none=True)  # OpenAI sends only what is there
        return body

    opened = False
    async for _, event in submission.events():
        if not opened:  # the role goes first, once generation has really started
            opened = True
            yield chunk(DeltaMessage(role="assistant", content=""), None)
        if isinstance(event, TextDelta):
            yield chunk(DeltaMessage(content=event.text), None)
        elif isinstance(event, Finished):
            yield chunk(DeltaMessage(), event.reason)
    if include_usage:
        yield ChatCompletionChunk(
            id=chunk_id, created=created, model=label, choices=[], usage=_usage(submission)
        ).model_dump()


def _usage(submission: Submission) -> Usage:
    prompt = sum(c.prompt_tokens for c in submission.choices)
    completion = sum(c.completion_tokens for c in submission.choices)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
