"""Request and response bodies of the server: the OpenAI-compatible API and vLLM's runtime-LoRA endpoints.

Requests ignore OpenAI fields they do not use (clients send many defaults) but refuse, with a 400, the ones
that would change the answer and are not implemented (n > 1, logprobs, echo, best_of).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_STOP_SEQUENCES = 16


class Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(Request):
    include_usage: bool = False


class SamplingFields(Request):
    """What every generation request shares."""

    model: str | None = Field(default=None, description="An adapter name, or the base model's served name.")
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, description="0 (the default) is greedy.")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    best_of: int | None = None
    ignore_eos: bool = Field(default=False, description="vLLM's extension: generate max_tokens even past EOS.")

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list):
            if len(value) > MAX_STOP_SEQUENCES:
                raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
            if any(not s for s in value):
                raise ValueError("stop sequences must not be empty")
        return value

    @model_validator(mode="after")
    def _one_choice(self) -> SamplingFields:
        if self.n != 1 or (self.best_of is not None and self.best_of != 1):
            raise ValueError("n and best_of must be 1: the built-in server returns one choice per prompt")
        return self

    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class CompletionRequest(SamplingFields):
    prompt: str | list[str] = Field(description="One prompt, or a list (one choice each).")
    echo: bool = False
    logprobs: int | None = None

    @model_validator(mode="after")
    def _supported(self) -> CompletionRequest:
        if self.echo or self.logprobs is not None:
            raise ValueError("echo and logprobs are not supported by the built-in server")
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt must not be an empty list")
        return self

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class ContentPart(Request):
    type: Literal["text"]
    text: str


class ChatMessage(Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False

    @model_validator(mode="after")
    def _supported(self) -> ChatCompletionRequest:
        if self.logprobs:
            raise ValueError("logprobs are not supported by the built-in server")
        return self

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


FinishReason = Literal["stop", "length"]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: FinishReason | None = None
    logprobs: None = None


class CompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "peft-operator"
    root: str | None = Field(default=None, description="The base model's directory, or the adapter's path.")
    parent: str | None = Field(default=None, description="For an adapter: the base model's served name.")
    max_model_len: int | None = None
    resident: bool | None = Field(
        default=None, description="For an adapter (built-in extension): its weights are in memory now."
    )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class LoadLoRAAdapterRequest(Request):
    """vLLM's POST /v1/load_lora_adapter."""

    # '/' as in vLLM: an adapter attached from another namespace is served as <namespace>/<name>.
    lora_name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    lora_path: str = Field(min_length=1, max_length=4096)
    pinned: bool = Field(default=False, description="Built-in extension: never evict it to make room for another.")


class UnloadLoRAAdapterRequest(Request):
    """vLLM's POST /v1/unload_lora_adapter."""

    lora_name: str = Field(min_length=1, max_length=128)
    lora_int_id: int | None = None


class AdminResult(BaseModel):
    """Answer to load/unload: what changed."""

    lora_name: str
    status: Literal["loaded", "unchanged", "replaced", "unloaded"]
    message: str
    lora_path: str | None = None
    load_seconds: float | None = None


class ErrorInfo(BaseModel):
    message: str
    type: str
    code: int
    reason: str
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo

    @classmethod
    def of(cls, status: int, reason: str, message: str) -> dict[str, Any]:
        kind = "BadRequestError" if status < 500 else "InternalServerError"
        return cls(error=ErrorInfo(message=message, type=kind, code=status, reason=reason)).model_dump()
