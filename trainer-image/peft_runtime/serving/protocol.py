"""Request bodies of the server (the OpenAI-compatible API and vLLM's runtime-LoRA endpoints), model cards,
admin results and errors; the generation answers are in responses.py.

Generation requests take the fields listed in their models and nothing else: fields OpenAI defines that the
engine does not implement are refused with a 400 naming them (openai_fields.py), unknown ones too.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .openai_fields import (
    CHAT_NO_EFFECT,
    CHAT_NOT_IMPLEMENTED,
    COMPLETION_NO_EFFECT,
    COMPLETION_NOT_IMPLEMENTED,
    MESSAGE_NOT_IMPLEMENTED,
    NotImplementedField,
    refuse_what_is_not_implemented,
)

MAX_STOP_SEQUENCES = 16
MAX_CHOICES = 16  # n: each choice is a row of the batch
MAX_LOGPROBS = 20  # top_logprobs (chat) and logprobs (completions): OpenAI's 20, vLLM's default max_logprobs
INT64 = 2**63


def invalid(param: str, message: str) -> PydanticCustomError:
    """A validation error that names the request field it is about (the error body's `param`)."""
    return PydanticCustomError("invalid_value", "{message}", {"param": param, "message": message})


class Request(BaseModel):
    """Admin bodies (vLLM's runtime-LoRA protocol): vLLM's fields that the built-in engine has no use for
    are ignored, so one agent drives both engines."""

    model_config = ConfigDict(extra="ignore")


class Strict(BaseModel):
    """Parts of generation requests: nothing unknown passes."""

    model_config = ConfigDict(extra="forbid")


class OpenAIRequest(Strict):
    """A body whose fields are either implemented (declared below) or listed in openai_fields.py."""

    not_implemented: ClassVar[Mapping[str, NotImplementedField]] = {}
    no_effect: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _refuse_what_is_not_implemented(cls, data: Any) -> Any:
        return refuse_what_is_not_implemented(data, cls.model_fields, cls.not_implemented, cls.no_effect)


class StreamOptions(Strict):
    include_usage: bool = False


class SamplingFields(OpenAIRequest):
    """What every generation request shares."""

    model: str | None = Field(default=None, description="An adapter name, or the base model's served name.")
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, description="0 (the default) is greedy.")
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=-INT64, lt=INT64)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=MAX_CHOICES, description="Choices per prompt.")
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[int, float] | None = Field(default=None, description="Token id (as a string) to a bias.")
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

    @field_validator("logit_bias")
    @classmethod
    def _bias_range(cls, value: dict[int, float] | None) -> dict[int, float] | None:
        if value and any(not -100.0 <= bias <= 100.0 for bias in value.values()):
            raise ValueError("biases must be between -100 and 100")
        return value

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise invalid("stream_options", "stream_options can only be set with stream: true")
        return self

    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def logprob_count(self) -> int | None:
        """How many alternatives to report per token; None: no logprobs."""
        raise NotImplementedError


class CompletionRequest(SamplingFields):
    not_implemented = COMPLETION_NOT_IMPLEMENTED
    no_effect = COMPLETION_NO_EFFECT

    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="A prompt, or a list of prompts (n choices each); a prompt is text or token ids."
    )
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS, description="Alternatives per token.")
    best_of: int | None = Field(default=None, ge=1, description="Accepted when it equals n.")
    echo: bool = Field(default=False, description="Each choice's text starts with its prompt.")

    @model_validator(mode="after")
    def _supported(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and not self.prompt:
            raise invalid("prompt", "prompt must not be an empty list")
        if isinstance(self.prompt, list) and any(isinstance(p, list) and not p for p in self.prompt):
            raise invalid("prompt", "a prompt of token ids must not be empty")
        if self.echo and self.logprobs is not None:
            raise invalid(
                "echo",
                "echo with logprobs needs the prompt's logprobs, which the built-in engine does not compute; "
                "ask for echo or for logprobs",
            )
        if self.best_of is not None and self.best_of < self.n:
            raise invalid("best_of", f"best_of ({self.best_of}) must be at least n ({self.n})")
        if self.best_of is not None and self.best_of > self.n:
            raise invalid(
                "best_of",
                "best_of > n (generating more choices and returning the best) is not implemented by the built-in "
                "engine; leave best_of out, or set it equal to n",
            )
        return self

    def prompts(self) -> list[str | list[int]]:
        """Text prompts, or token-id prompts."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if all(isinstance(p, int) for p in self.prompt):
            return [cast(list[int], self.prompt)]  # one prompt of token ids
        return list(cast(list[str | list[int]], self.prompt))

    def logprob_count(self) -> int | None:
        return self.logprobs


class ContentPart(Strict):
    type: Literal["text"]
    text: str


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_what_is_not_implemented(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if data.get("role") in ("tool", "function"):
                raise invalid(
                    "role",
                    f"{data['role']} messages answer tool calls, which the built-in engine does not implement",
                )
            content = data.get("content")
            for i, part in enumerate(content if isinstance(content, list) else []):
                if isinstance(part, dict) and part.get("type", "text") != "text":
                    raise invalid(
                        f"content[{i}].type",
                        f"{part.get('type')!r} content is not supported: the built-in engine serves text-only "
                        "models; send text parts",
                    )
        return refuse_what_is_not_implemented(data, cls.model_fields, MESSAGE_NOT_IMPLEMENTED)

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(SamplingFields):
    not_implemented = CHAT_NOT_IMPLEMENTED
    no_effect = CHAT_NO_EFFECT

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise invalid("top_logprobs", "top_logprobs needs logprobs: true")
        return self

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def logprob_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


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
    pinned: bool | None = Field(default=None, description="For an adapter (built-in extension): never evicted.")


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
    def of(cls, status: int, reason: str, message: str, param: str | None = None) -> dict[str, Any]:
        """vLLM's error body (OpenAI's, with the HTTP status as `code`) plus our CamelCase `reason`."""
        kind = ERROR_TYPES.get(status, "BadRequestError" if status < 500 else "InternalServerError")
        return cls(error=ErrorInfo(message=message, type=kind, code=status, reason=reason, param=param)).model_dump()


# The names the openai client gives its exceptions for these statuses, as vLLM spells `type`.
ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    409: "ConflictError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
}
