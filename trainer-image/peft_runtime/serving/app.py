"""HTTP routes of the built-in server: thin handlers over `Engine`; errors become JSON at the edge.

POST /v1/completions, /v1/chat/completions   OpenAI-compatible (stream: true gives SSE chunks + [DONE])
GET  /v1/models, /v1/models/{id}              the base model and the adapters (with parent = base)
POST /v1/load_lora_adapter                    {"lora_name", "lora_path"}: vLLM's runtime LoRA protocol
POST /v1/unload_lora_adapter                  {"lora_name"}
GET  /health, GET /metrics
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from ..common.errors import BadRequest, ModelNotFound
from ..common.http_edge import TokenSource, error_middleware, json_response, read_body
from .engine import Choice, Engine, Submission
from .logprobs import LogprobFormatter
from .openai_errors import validation_errors
from .protocol import (
    AdminResult,
    ChatCompletionRequest,
    CompletionRequest,
    ErrorResponse,
    LoadLoRAAdapterRequest,
    ModelCard,
    ModelList,
    UnloadLoRAAdapterRequest,
)
from .responses import AssistantMessage, ChatChoice, ChatCompletionResponse, CompletionChoice, CompletionResponse
from .streaming import chat_chunks, completion_chunks, stream, usage

ENGINE = web.AppKey("engine", Engine)
TOKEN = web.AppKey("token", TokenSource)
LOGPROBS = web.AppKey("logprobs", LogprobFormatter)
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


def create_app(engine: Engine, token: TokenSource) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware(ErrorResponse.of), validation_errors], client_max_size=32 * 1024 * 1024
    )
    app[ENGINE] = engine
    app[TOKEN] = token
    app[LOGPROBS] = LogprobFormatter(engine.tokenizer)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/models/{model:.+}", retrieve_model)
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


def _cards(engine: Engine) -> list[ModelCard]:
    base = engine.base
    cards = [ModelCard(id=base.served_name, root=base.root, max_model_len=engine.max_model_len)]
    cards += [
        ModelCard(
            id=a.name,
            root=str(a.path),
            parent=base.served_name,
            created=int(a.loaded_at),
            resident=a.resident,
            pinned=a.pinned,
        )
        for a in engine.registry.adapters()
    ]
    return cards


async def models(request: web.Request) -> web.Response:
    return json_response(ModelList(data=_cards(request.app[ENGINE])))


async def retrieve_model(request: web.Request) -> web.Response:
    engine, wanted = request.app[ENGINE], request.match_info["model"]
    engine.registry.check_model(wanted)  # 404 in the words the generation routes use
    card = next((c for c in _cards(engine) if c.id == wanted), None)
    if card is None:
        raise ModelNotFound(f"adapter '{wanted}' was unloaded")
    return json_response(card)


async def completions(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    body = CompletionRequest.model_validate(await read_body(request))
    adapter = engine.registry.check_model(body.model)
    logprobs = request.app[LOGPROBS] if body.logprobs is not None else None
    async with engine.holding(adapter):  # an evicted adapter is loaded back first
        prompts = [_prompt_ids(engine, p) for p in body.prompts()]
        params = [
            engine.sampling(len(p), max_tokens=body.max_tokens, default=COMPLETIONS_DEFAULT_MAX_TOKENS, fields=body)
            for p in prompts
        ]
        label = body.model or engine.base.served_name
        echoes = [_prompt_text(engine, p) for p in body.prompts() for _ in range(body.n)] if body.echo else None
        submission = Submission(engine, adapter, label, prompts, params, n=body.n).start()
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            chunks = completion_chunks(submission, label, include_usage, logprobs, echoes)
            return await stream(request, submission, chunks)
        choices = await submission.collect()
        return json_response(
            CompletionResponse(
                model=label,
                choices=[
                    _completion_choice(i, c, logprobs, echoes[i] if echoes else "") for i, c in enumerate(choices)
                ],
                usage=usage(submission),
            )
        )


def _prompt_ids(engine: Engine, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, str):
        return engine.encode(prompt)
    vocab = int(engine.registry.model.config.vocab_size)
    if any(not 0 <= token < vocab for token in prompt):
        raise BadRequest(f"prompt: token ids must be in [0, {vocab}), the model's vocabulary")
    return prompt


def _prompt_text(engine: Engine, prompt: str | list[int]) -> str:
    return prompt if isinstance(prompt, str) else str(engine.tokenizer.decode(prompt))


def _completion_choice(index: int, choice: Choice, logprobs: LogprobFormatter | None, echo: str) -> CompletionChoice:
    return CompletionChoice(
        index=index,
        text=echo + choice.text,
        finish_reason=choice.finish_reason,
        logprobs=logprobs.completion(choice.logprobs, 0) if logprobs is not None else None,
    )


async def chat_completions(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    body = ChatCompletionRequest.model_validate(await read_body(request))
    adapter = engine.registry.check_model(body.model)
    logprobs = request.app[LOGPROBS] if body.logprobs else None
    async with engine.holding(adapter):  # an evicted adapter is loaded back first
        prompt = engine.encode_chat(body.messages)
        params = engine.sampling(
            len(prompt), max_tokens=body.token_limit(), default=engine.config.default_max_tokens, fields=body
        )
        label = body.model or engine.base.served_name
        submission = Submission(engine, adapter, label, [prompt], [params], n=body.n).start()
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return await stream(request, submission, chat_chunks(submission, label, include_usage, logprobs))
        choices = await submission.collect()
        return json_response(
            ChatCompletionResponse(
                model=label,
                choices=[
                    ChatChoice(
                        index=i,
                        message=AssistantMessage(content=c.text),
                        finish_reason=c.finish_reason,
                        logprobs=logprobs.chat(c.logprobs) if logprobs is not None else None,
                    )
                    for i, c in enumerate(choices)
                ],
                usage=usage(submission),
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
