"""Token logprobs in OpenAI's two shapes: chat's `logprobs.content` and the legacy completions shape.

The numbers are the model's raw distribution (log-softmax of the logits before logit_bias, penalties,
temperature and top-p; see generation.TokenLogprob), as vLLM reports them by default, so the numbers do not
depend on the sampling settings (and a plain greedy token is also the first of its top alternatives). Each token is decoded on its
own, special tokens included (the EOS token that ended a choice has an entry, as it counts in `usage`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from .generation import TokenLogprob

LOGPROB_FLOOR = -9999.0  # JSON has no -inf; vLLM uses the same floor


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None
    refusal: list[ChatTokenLogprob] | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class LogprobFormatter:
    """Decodes token ids for logprob entries (decoding is cached: the same ids come back all the time)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._decoded: dict[int, str] = {}

    def token(self, token_id: int) -> str:
        text = self._decoded.get(token_id)
        if text is None:
            text = self._decoded[token_id] = str(self._tokenizer.decode([token_id]))
        return text

    def _top(self, token_id: int, logprob: float) -> TopLogprob:
        token = self.token(token_id)
        return TopLogprob(token=token, logprob=max(logprob, LOGPROB_FLOOR), bytes=list(token.encode()))

    def chat(self, entries: Sequence[TokenLogprob]) -> ChatLogprobs:
        return ChatLogprobs(
            content=[
                ChatTokenLogprob(
                    **self._top(entry.token_id, entry.logprob).model_dump(),
                    top_logprobs=[self._top(i, lp) for i, lp in entry.top],
                )
                for entry in entries
            ]
        )

    def completion(self, entries: Sequence[TokenLogprob], text_offset: int) -> CompletionLogprobs:
        """The legacy shape; `text_offset` is where the first entry's token starts in the choice's text. Each
        top_logprobs dict holds the sampled token too (so up to logprobs + 1 entries), as OpenAI's did."""
        body = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
        for entry in entries:
            token = self.token(entry.token_id)
            body.tokens.append(token)
            body.token_logprobs.append(max(entry.logprob, LOGPROB_FLOOR))
            top: dict[str, float] = {}
            for i, lp in ((entry.token_id, entry.logprob), *entry.top):  # two ids can read the same: keep the first
                top.setdefault(self.token(i), max(lp, LOGPROB_FLOOR))
            body.top_logprobs.append(top)
            body.text_offset.append(text_offset)
            text_offset += len(token)
        return body
