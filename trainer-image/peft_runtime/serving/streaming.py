"""Server-sent events for `stream: true`: OpenAI's chunk shapes for completions and chat, one choice per
chunk (choices interleave when n > 1), then an optional usage chunk and `data: [DONE]`."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator
from typing import Any

from aiohttp import web

from .engine import Submission
from .generation import Finished, TextDelta
from .logprobs import LogprobFormatter
from .protocol import ErrorResponse
from .responses import (
    ChatChunkChoice,
    ChatCompletionChunk,
    CompletionChoice,
    CompletionResponse,
    DeltaMessage,
    Usage,
)

Chunks = AsyncGenerator[dict[str, Any], None]


def usage(submission: Submission) -> Usage:
    """Prompt tokens once per prompt, completion tokens of every choice (as OpenAI and vLLM count)."""
    completion = sum(c.completion_tokens for c in submission.choices)
    return Usage(
        prompt_tokens=submission.prompt_tokens,
        completion_tokens=completion,
        total_tokens=submission.prompt_tokens + completion,
    )


async def stream(request: web.Request, submission: Submission, chunks: Chunks) -> web.StreamResponse:
    """The first chunk is awaited before the headers go out, so an error that happens before any text (e.g.
    the adapter was unloaded meanwhile) is still an ordinary HTTP error."""
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


async def completion_chunks(
    submission: Submission,
    label: str,
    include_usage: bool,
    logprobs: LogprobFormatter | None,
    echoes: list[str] | None = None,
) -> Chunks:
    """`echoes`: each choice's prompt text, sent in front of its first text (`echo: true`)."""
    chunk_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    text_offsets = [0] * len(submission.choices)
    echoed: set[int] = set()

    def chunk(choice: CompletionChoice) -> dict[str, Any]:
        body = CompletionResponse(id=chunk_id, created=created, model=label, choices=[choice])
        return body.model_dump(exclude={"usage"})

    async for index, event in submission.events():
        if echoes is not None and index not in echoed:
            echoed.add(index)
            yield chunk(CompletionChoice(index=index, text=echoes[index]))
        if isinstance(event, TextDelta):
            entries = None
            if logprobs is not None:
                entries = logprobs.completion(event.logprobs, text_offsets[index])
                text_offsets[index] += sum(len(token) for token in entries.tokens)
            yield chunk(CompletionChoice(index=index, text=event.text, logprobs=entries))
        elif isinstance(event, Finished):
            yield chunk(CompletionChoice(index=index, text="", finish_reason=event.reason))
    if include_usage:
        yield CompletionResponse(
            id=chunk_id, created=created, model=label, choices=[], usage=usage(submission)
        ).model_dump()


async def chat_chunks(
    submission: Submission, label: str, include_usage: bool, logprobs: LogprobFormatter | None
) -> Chunks:
    chunk_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(choice: ChatChunkChoice) -> dict[str, Any]:
        body = ChatCompletionChunk(id=chunk_id, created=created, model=label, choices=[choice]).model_dump(
            exclude={"usage"}
        )
        body["choices"][0]["delta"] = choice.delta.model_dump(exclude_none=True)  # OpenAI sends only what is there
        return body

    opened: set[int] = set()
    async for index, event in submission.events():
        if index not in opened:  # a choice's role goes first, once its generation has really started
            opened.add(index)
            yield chunk(ChatChunkChoice(index=index, delta=DeltaMessage(role="assistant", content="")))
        if isinstance(event, TextDelta):
            entries = logprobs.chat(event.logprobs) if logprobs is not None else None
            yield chunk(ChatChunkChoice(index=index, delta=DeltaMessage(content=event.text), logprobs=entries))
        elif isinstance(event, Finished):
            yield chunk(ChatChunkChoice(index=index, delta=DeltaMessage(), finish_reason=event.reason))
    if include_usage:
        yield ChatCompletionChunk(
            id=chunk_id, created=created, model=label, choices=[], usage=usage(submission)
        ).model_dump()
