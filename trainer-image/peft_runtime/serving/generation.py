"""Token-by-token generation for a batch of rows, each with its own adapter, prompt and sampling settings.

One step is one forward pass of the whole batch (`AdapterRegistry.forward`, with per-row adapter names) and
one token for every row. Rows are left-padded; position ids and the attention mask account for the padding,
so a row's tokens do not depend on what else is in the batch; prefix- and prompt-tuning rows start with
their virtual tokens (virtual_tokens.py). Rows leave the batch as soon as they finish,
and new rows can join between steps: their prompts are prefilled on their own and their KV cache is merged
in (continuous batching; for caches made of plain DynamicLayers, which is what Llama-style models use).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..common.errors import ServingError
from .registry import AdapterRegistry
from .virtual_tokens import prefill_inputs

log = logging.getLogger(__name__)

_PROMPT_CONTEXT_TOKENS = 6  # tokens of the prompt decoded with the output, for tokenizers that merge spaces


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # report each token's logprob and this many most likely alternatives
    frequency_penalty: float = 0.0  # OpenAI's penalties, on the tokens this row generated so far
    presence_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability under the model's raw distribution (log-softmax of the logits,
    before logit_bias, penalties, temperature and top-p, as vLLM's default `raw_logprobs`), and the most
    likely tokens there."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]  # (token id, logprob), most likely first


@dataclass(frozen=True)
class TextDelta:
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()  # the tokens generated since the previous delta (when asked for)


@dataclass(frozen=True)
class Finished:
    reason: str  # stop | length | error
    prompt_tokens: int
    completion_tokens: int
    error: ServingError | None = None


Event = TextDelta | Finished


@dataclass
class GenerationRequest:
    """What the HTTP layer submits; `emit` receives TextDelta events and one Finished (from the worker thread)."""

    adapter: str | None  # public adapter name, None for the base model
    prompt_ids: list[int]
    params: SamplingParams
    emit: Callable[[Event], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted_at: float = field(default_factory=time.monotonic)


class TextAssembler:
    """Turns a growing list of token ids into text deltas, holding back text that may start a stop string."""

    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int], stop: tuple[str, ...]) -> None:
        self._tokenizer = tokenizer
        self._ids = list(prompt_ids[-_PROMPT_CONTEXT_TOKENS:])
        self._prefix = 0
        self._read = len(self._ids)
        self._stop = stop
        self._text = ""
        self._released = 0
        self._stopped = False

    def add(self, token: int) -> tuple[str, bool]:
        """Append one token: returns (text now safe to send, whether a stop string was reached)."""
        self._ids.append(token)
        before = self._tokenizer.decode(self._ids[self._prefix : self._read], skip_special_tokens=True)
        after = self._tokenizer.decode(self._ids[self._prefix :], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return "", False  # an incomplete UTF-8 sequence or a token with no text of its own
        searched_from = max(0, len(self._text) - max((len(s) for s in self._stop), default=0))
        self._text += after[len(before) :]
        self._prefix, self._read = self._read, len(self._ids)
        hits = [i for i in (self._text.find(s, searched_from) for s in self._stop) if i >= 0]
        if hits:
            self._text = self._text[: min(hits)]
            self._stopped = True
            return self._release(len(self._text)), True
        return self._release(len(self._text) - self._held_back()), False

    def flush(self) -> str:
        """At the end: everything not sent yet, including an incomplete character ('\ufffd')."""
        if not self._stopped and self._read < len(self._ids):
            before = self._tokenizer.decode(self._ids[self._prefix : self._read], skip_special_tokens=True)
            after = self._tokenizer.decode(self._ids[self._prefix :], skip_special_tokens=True)
            self._text += after[len(before) :]
            self._prefix = self._read = len(self._ids)
        return self._release(len(self._text))

    def _held_back(self) -> int:
        """Length of the longest end of the text that could still grow into a stop string."""
        longest = 0
        for stop in self._stop:
            for n in range(min(len(stop) - 1, len(self._text)), longest, -1):
                if self._text.endswith(stop[:n]):
                    longest = n
                    break
        return longest

    def _release(self, upto: int) -> str:
        if upto <= self._released:
            return ""
        text, self._released = self._text[self._released : upto], upto
        return text


class Row:
    """One request being generated."""

    def __init__(self, request: GenerationRequest, internal: str | None, tokenizer: Any) -> None:
        self.request = request
        self.internal = internal
        self.tokens: list[int] = []
        self.unsent_logprobs: list[TokenLogprob] = []  # tokens whose text is still held back
        self.text = TextAssembler(tokenizer, request.prompt_ids, request.params.stop)
        self.generator: torch.Generator | None = None
        if request.params.temperature > 0:
            self.generator = torch.Generator().manual_seed(
                request.params.seed if request.params.seed is not None else secrets.randbits(62)
            )
        self.done = False

    def send(self, text: str) -> None:
        self.request.emit(TextDelta(text, tuple(self.unsent_logprobs)))
        self.unsent_logprobs.clear()

    def finish(self, reason: str, error: ServingError | None = None) -> None:
        if self.done:
            return
        self.done = True
        if error is None:
            rest = self.text.flush()
            if rest or self.unsent_logprobs:
                self.send(rest)
        self.request.emit(Finished(reason, len(self.request.prompt_ids), len(self.tokens), error))


@dataclass
class Batch:
    rows: list[Row]
    cache: Any  # transformers DynamicCache, batch dimension = rows
    mask: torch.Tensor  # [rows, cached positions]: 0 on each row's left padding
    positions: torch.Tensor  # [rows, 1]: position id of each row's last token
    next_tokens: torch.Tensor  # [rows]: the token each row feeds into the next step


class BatchRunner:
    """Prefill, step and merge batches; the scheduler decides when. Not thread-safe: one worker thread."""

    def __init__(self, registry: AdapterRegistry, tokenizer: Any, *, eos_ids: set[int], max_model_len: int) -> None:
        self.registry = registry
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.max_model_len = max_model_len
        self.device = registry.device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos_ids), 0)
        self.can_merge: bool | None = None  # known after the first prefill

    def admit(self, request: GenerationRequest) -> Row | None:
        """A Row for the request, or None if it cannot start (already cancelled, adapter gone)."""
        if request.cancelled.is_set():
            return None
        try:
            internal = self.registry.acquire(request.adapter)
        except ServingError as error:
            request.emit(Finished("error", len(request.prompt_ids), 0, error))
            return None
        return Row(request, internal, self.tokenizer)

    def prefill(self, rows: list[Row]) -> Batch | None:
        inputs = prefill_inputs(
            [r.request.prompt_ids for r in rows],
            [self.registry.virtual_tokens(r.internal) for r in rows],
            pad_id=self.pad_id,
            device=self.device,
            model_config=self.registry.model.config,
        )
        logits = self.registry.forward(
            [r.internal for r in rows],
            soft_prompts=inputs.soft_prompts,
            input_ids=inputs.input_ids,
            attention_mask=inputs.mask,
            position_ids=inputs.positions,
            cache=inputs.cache,
        )
        if self.can_merge is None:
            self.can_merge = _mergeable(inputs.cache)
        batch = Batch(
            rows, inputs.cache, inputs.mask, inputs.positions[:, -1:], torch.zeros(len(rows), dtype=torch.long)
        )
        return self._advance(batch, logits)

    def step(self, batch: Batch) -> Batch | None:
        mask = torch.cat([batch.mask, torch.ones((len(batch.rows), 1), dtype=batch.mask.dtype, device=self.device)], 1)
        positions = batch.positions + 1
        logits = self.registry.forward(
            [r.internal for r in batch.rows],
            input_ids=batch.next_tokens[:, None],
            attention_mask=mask,
            position_ids=positions,
            cache=batch.cache,
        )
        batch.mask, batch.positions = mask, positions
        return self._advance(batch, logits)

    def merge(self, batch: Batch, joining: Batch) -> Batch:
        """One batch holding both: the shorter cache is left-padded (masked) to the longer one's length."""
        width = max(batch.mask.shape[1], joining.mask.shape[1])
        for ours, theirs in zip(batch.cache.layers, joining.cache.layers, strict=True):
            ours.keys = torch.cat([_pad_left(ours.keys, width, -2), _pad_left(theirs.keys, width, -2)])
            ours.values = torch.cat([_pad_left(ours.values, width, -2), _pad_left(theirs.values, width, -2)])
        batch.mask = torch.cat([_pad_left(batch.mask, width, 1), _pad_left(joining.mask, width, 1)])
        batch.positions = torch.cat([batch.positions, joining.positions])
        batch.next_tokens = torch.cat([batch.next_tokens, joining.next_tokens])
        batch.rows = batch.rows + joining.rows
        return batch

    def fail(self, rows: list[Row], error: ServingError) -> None:
        for row in rows:
            row.finish("error", error)
            self.registry.release(row.internal)

    def _advance(self, batch: Batch, logits: torch.Tensor) -> Batch | None:
        """Sample one token per row, send text, finish rows; returns the batch of the rows still going."""
        logits = logits.float()
        tokens = self._sample(logits, batch.rows)
        logprobs = _token_logprobs(logits, batch.rows, tokens)
        keep: list[int] = []
        for i, (row, token) in enumerate(zip(batch.rows, tokens, strict=True)):
            if (entry := logprobs[i]) is not None:
                row.unsent_logprobs.append(entry)
            self._take(row, token, int(batch.positions[i, 0]) + 1)
            if row.done:
                self.registry.release(row.internal)
            else:
                keep.append(i)
        if not keep:
            return None
        batch.next_tokens = torch.tensor(tokens, dtype=torch.long, device=self.device)
        if len(keep) < len(batch.rows):
            index = torch.tensor(keep, device=self.device)
            batch.cache.batch_select_indices(index)
            batch.rows = [batch.rows[i] for i in keep]
            batch.mask, batch.positions, batch.next_tokens = (
                batch.mask[index],
                batch.positions[index],
                batch.next_tokens[index],
            )
            _trim_left_padding(batch)
        return batch

    def _take(self, row: Row, token: int, next_position: int) -> None:
        params = row.request.params
        if row.request.cancelled.is_set():
            row.done = True  # the client went away: nobody to tell
            return
        row.tokens.append(token)
        if token in self.eos_ids and not params.ignore_eos:
            row.finish("stop")
            return
        text, stopped = row.text.add(token)
        if text:
            row.send(text)
        if stopped:
            row.finish("stop")
        elif len(row.tokens) >= params.max_tokens or next_position >= self.max_model_len:
            row.finish("length")

    def _sample(self, logits: torch.Tensor, rows: list[Row]) -> list[int]:
        logits = _biased_and_penalized(logits, rows)
        chosen: list[int] = logits.argmax(-1).tolist()
        for i, row in enumerate(rows):
            params = row.request.params
            if row.generator is None:
                continue
            probs = torch.softmax(logits[i].cpu() / params.temperature, dim=-1)
            if params.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                outside = sorted_probs.cumsum(0) - sorted_probs > params.top_p
                probs[order[outside]] = 0.0
            chosen[i] = int(torch.multinomial(probs, 1, generator=row.generator))
        return chosen


def _biased_and_penalized(logits: torch.Tensor, rows: list[Row]) -> torch.Tensor:
    """OpenAI's logit_bias and frequency/presence penalties, per row: logit[j] += bias[j] - count[j] *
    frequency_penalty - (count[j] > 0) * presence_penalty, count[j] being how often the row generated token j."""
    adjusted: torch.Tensor | None = None
    for i, row in enumerate(rows):
        params = row.request.params
        penalized = bool(row.tokens) and bool(params.frequency_penalty or params.presence_penalty)
        if not params.logit_bias and not penalized:
            continue
        if adjusted is None:
            adjusted = logits.clone()  # the raw logits stay as they are, for logprobs
        if params.logit_bias:
            ids, biases = zip(*params.logit_bias, strict=True)
            adjusted[i, list(ids)] += torch.tensor(biases, dtype=logits.dtype, device=logits.device)
        if penalized:
            generated = torch.tensor(row.tokens, device=logits.device)
            counts = torch.bincount(generated, minlength=logits.shape[-1]).to(logits.dtype)
            adjusted[i] -= counts * params.frequency_penalty + (counts > 0).to(logits.dtype) * params.presence_penalty
    return logits if adjusted is None else adjusted


def _token_logprobs(logits: torch.Tensor, rows: list[Row], tokens: list[int]) -> list[TokenLogprob | None]:
    """For the rows that asked: the sampled token's logprob and the top alternatives (raw distribution)."""
    wanted = [i for i, row in enumerate(rows) if row.request.params.logprobs is not None]
    found: list[TokenLogprob | None] = [None] * len(rows)
    if not wanted:
        return found
    logprobs = torch.log_softmax(logits[wanted], dim=-1).cpu()
    widest = max(rows[i].request.params.logprobs or 0 for i in wanted)
    top_values, top_ids = logprobs.topk(widest, dim=-1)
    for j, i in enumerate(wanted):
        k = rows[i].request.params.logprobs or 0
        top = tuple(zip(top_ids[j, :k].tolist(), top_values[j, :k].tolist(), strict=True))
        found[i] = TokenLogprob(tokens[i], float(logprobs[j, tokens[i]]), top)
    return found


def _mergeable(cache: Any) -> bool:
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer and layer.is_initialized for layer in cache.layers)


def _pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _trim_left_padding(batch: Batch) -> None:
    """Drop cache columns that are padding for every row left (after long rows finish)."""
    used = batch.mask.any(0).nonzero()
    first = int(used[0]) if len(used) else 0
    if first == 0 or not _mergeable(batch.cache):
        return
    batch.mask = batch.mask[:, first:]
    for layer in batch.cache.layers:
        layer.keys = layer.keys[..., first:, :]
        layer.values = layer.values[..., first:, :]
