"""The server's working parts, put together: base model and tokenizer, the adapter registry, the batching
scheduler and metrics; plus what a route needs to turn a request into generation (`Submission`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..common.errors import BadRequest
from .adapters import BaseModelInfo
from .batching import BatchScheduler
from .generation import BatchRunner, Event, Finished, GenerationRequest, SamplingParams, TextDelta, TokenLogprob
from .metrics import ServingMetrics
from .protocol import ChatMessage
from .registry import AdapterRegistry

log = logging.getLogger(__name__)


@dataclass
class EngineConfig:
    model_dir: Path
    served_name: str | None = None  # default: the model directory's name
    base_model_uri: str | None = None  # when set, adapters whose manifest names another base are refused
    base_model_revision: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    max_adapters: int = 32
    max_resident: int | None = None  # adapters in memory at once (default: max_adapters, i.e. all)
    resident_wait_s: float = 30.0  # how long a cold request waits for a memory slot to free up
    max_rank: int = 64
    max_batch_size: int = 64
    batch_window_ms: float = 5.0
    max_prefill_tokens: int = 8192
    default_max_tokens: int = 256  # chat completions without max_tokens (completions default to 16, as OpenAI)
    threads: int | None = None  # torch CPU threads (process-wide); None leaves torch's default
    adapters: dict[str, Path] = field(default_factory=dict)  # loaded at start-up


def _device(choice: str) -> str:
    if choice != "auto":
        return choice
    return "cuda" if torch.cuda.is_available() else "cpu"


def _dtype(choice: str, device: str) -> torch.dtype:
    if choice == "auto":
        # bf16 on GPUs; float32 on CPU, where bf16 matmuls are many times slower
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[choice]


class Engine:
    def __init__(self, config: EngineConfig) -> None:
        import peft  # noqa: F401  (imported now, so that the first hot-load does not pay for it)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config
        self.device = _device(config.device)
        if config.threads:
            torch.set_num_threads(config.threads)
        started = time.perf_counter()
        self.tokenizer = AutoTokenizer.from_pretrained(config.model_dir)
        model = AutoModelForCausalLM.from_pretrained(config.model_dir, dtype=_dtype(config.dtype, self.device))
        model.to(self.device).eval()  # type: ignore[arg-type]  # transformers types .to() oddly
        self.base = BaseModelInfo.of(
            model,
            served_name=config.served_name or config.model_dir.resolve().name,
            root=str(config.model_dir),
            uri=config.base_model_uri,
            revision=config.base_model_revision,
        )
        self.max_model_len = int(self.base.max_model_len or self.tokenizer.model_max_length or 2048)
        self.metrics = ServingMetrics()
        self.registry = AdapterRegistry(
            model,
            self.base,
            max_adapters=config.max_adapters,
            max_resident=config.max_resident,
            resident_wait_s=config.resident_wait_s,
            max_rank=config.max_rank,
            device=self.device,
            on_change=self._count_adapters,
            on_cold_load=self._count_cold_load,
            on_leave_memory=self._count_time_in_memory,
        )
        runner = BatchRunner(
            self.registry, self.tokenizer, eos_ids=_eos_ids(model, self.tokenizer), max_model_len=self.max_model_len
        )
        self.scheduler = BatchScheduler(
            runner,
            self.metrics,
            max_batch_size=config.max_batch_size,
            batch_window_s=config.batch_window_ms / 1000,
            max_prefill_tokens=config.max_prefill_tokens,
        )
        for name, path in config.adapters.items():
            self.registry.load(name, path)
        log.info(
            "Serving %s from %s on %s (%d adapters) after %.1f s",
            self.base.served_name,
            config.model_dir,
            self.device,
            len(config.adapters),
            time.perf_counter() - started,
        )

    def start(self) -> Engine:
        self.scheduler.start()
        return self

    def _count_cold_load(self, adapter: str, seconds: float) -> None:
        self.metrics.adapter_cold_loads.labels(adapter).inc()
        self.metrics.adapter_cold_load_seconds.observe(seconds)

    def _count_time_in_memory(self, adapter: str, seconds: float, evicted: bool) -> None:
        self.metrics.adapter_resident_seconds.labels(adapter).inc(seconds)
        if evicted:
            self.metrics.adapter_evictions.labels(adapter).inc()

    def _count_adapters(self) -> None:
        self.metrics.adapters_loaded.set(self.registry.count())
        self.metrics.adapters_resident.set(self.registry.resident_count())

    @contextlib.asynccontextmanager
    async def holding(self, adapter: str | None) -> AsyncIterator[None]:
        """Keep a request's adapter in memory from admission to its last token, cold-loading it first when
        it was evicted (off the event loop: a load reads files)."""
        if adapter is None:
            yield
            return
        await asyncio.to_thread(self.registry.hold, adapter)
        try:
            yield
        finally:
            self.registry.unhold(adapter)

    def stop(self) -> None:
        self.scheduler.stop()

    # ------------------------------------------------------------------------------------ prompts

    def encode(self, prompt: str) -> list[int]:
        ids: list[int] = self.tokenizer(prompt).input_ids
        if not ids:
            raise BadRequest("the prompt is empty")
        return ids

    def encode_chat(self, messages: list[ChatMessage]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise BadRequest(f"{self.base.served_name} has no chat template; use /v1/completions")
        rendered = self.tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.text()} for m in messages], tokenize=False, add_generation_prompt=True
        )
        ids: list[int] = self.tokenizer(rendered, add_special_tokens=False).input_ids
        return ids

    def sampling(self, prompt_tokens: int, *, max_tokens: int | None, default: int, fields: Any) -> SamplingParams:
        room = self.max_model_len - prompt_tokens
        if room <= 0 or (max_tokens is not None and max_tokens > room):
            raise BadRequest(
                f"the prompt has {prompt_tokens} tokens and max_tokens is {max_tokens or default}: together more "
                f"than the model's context of {self.max_model_len} tokens; shorten the prompt or ask for fewer tokens"
            )
        return SamplingParams(
            max_tokens=max_tokens if max_tokens is not None else min(default, room),
            temperature=fields.temperature or 0.0,
            top_p=fields.top_p if fields.top_p is not None else 1.0,
            seed=fields.seed,
            stop=fields.stop_sequences(),
            ignore_eos=fields.ignore_eos,
            logprobs=fields.logprob_count(),
            frequency_penalty=fields.frequency_penalty or 0.0,
            presence_penalty=fields.presence_penalty or 0.0,
            logit_bias=self._logit_bias(fields.logit_bias or {}),
        )

    def _logit_bias(self, biases: dict[int, float]) -> tuple[tuple[int, float], ...]:
        vocab = int(self.registry.model.config.vocab_size)
        if outside := [token for token in biases if not 0 <= token < vocab]:
            raise BadRequest(f"logit_bias: token ids {outside} are outside the model's vocabulary [0, {vocab})")
        return tuple(biases.items())


@dataclass
class Choice:
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)


class Submission:
    """The generation requests of one HTTP request (n per prompt: choice p * n + j is prompt p's j-th, with
    seed + j when seeded), with their events on one asyncio queue. Must be created on the event loop."""

    def __init__(
        self,
        engine: Engine,
        adapter: str | None,
        model_label: str,
        prompts: list[list[int]],
        params: list[SamplingParams],
        n: int = 1,
    ) -> None:
        self.engine = engine
        self.model_label = model_label
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        per_choice = [(ids, _nth_choice(p, j)) for ids, p in zip(prompts, params, strict=True) for j in range(n)]
        self.requests = [
            GenerationRequest(adapter, ids, p, emit=self._emitter(i)) for i, (ids, p) in enumerate(per_choice)
        ]
        self.choices = [Choice() for _ in per_choice]
        self.prompt_tokens = sum(len(ids) for ids in prompts)  # once per prompt, however many choices
        self.started = time.monotonic()
        self._first_text: float | None = None

    def _emitter(self, index: int) -> Any:
        def emit(event: Event) -> None:
            with contextlib.suppress(RuntimeError):  # the event loop is gone (server shutting down)
                self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, event))

        return emit

    def start(self) -> Submission:
        for request in self.requests:
            self.engine.scheduler.submit(request)
        return self

    def cancel(self) -> None:
        for request in self.requests:
            request.cancelled.set()

    async def events(self) -> AsyncIterator[tuple[int, Event]]:
        """Events until every prompt finished; raises the first error (the rest are cancelled)."""
        open_choices = len(self.requests)
        try:
            while open_choices:
                index, event = await self.queue.get()
                if isinstance(event, TextDelta) and self._first_text is None:
                    self._first_text = time.monotonic()
                    self.engine.metrics.first_token.labels(self.model_label).observe(self._first_text - self.started)
                if isinstance(event, Finished):
                    open_choices -= 1
                    self._record(index, event)
                    if event.error is not None:
                        raise event.error
                else:
                    self.choices[index].text += event.text
                    self.choices[index].logprobs += event.logprobs
                yield index, event
        finally:
            if open_choices:
                self.cancel()

    async def collect(self) -> list[Choice]:
        async for _ in self.events():
            pass
        return self.choices

    def _record(self, index: int, event: Finished) -> None:
        metrics, label = self.engine.metrics, self.model_label
        choice = self.choices[index]
        choice.finish_reason = event.reason
        choice.completion_tokens = event.completion_tokens
        metrics.requests.labels(label, "error" if event.error else "ok").inc()
        metrics.prompt_tokens.labels(label).inc(event.prompt_tokens)
        metrics.generation_tokens.labels(label).inc(event.completion_tokens)
        metrics.latency.labels(label).observe(time.monotonic() - self.started)


def _nth_choice(params: SamplingParams, j: int) -> SamplingParams:
    """The j-th choice of a prompt: a seeded request gives each choice its own, reproducible seed."""
    return params if j == 0 or params.seed is None else replace(params, seed=params.seed + j)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (
        getattr(model.generation_config, "eos_token_id", None),
        model.config.eos_token_id,
        tokenizer.eos_token_id,
    ):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, list):
            ids.update(int(i) for i in source)
    return ids
