"""The built-in server as OpenAI's official Python client (`openai`, pinned in constraints.txt) sees it: a
real server on loopback with the tiny Llama and two LoRA adapters, driven only through the client.

The tests up to "built-in engine only" take a `target` (client, base model, two adapters) and assert only
what OpenAI's API promises, so tests/vllm/test_openai_client_on_real_vllm.py runs the same functions against
real vLLM. The rest check what only the built-in engine does: GET /v1/models/{id} (vLLM 0.32 has no such
route) and the 400s for request fields it does not implement (vLLM implements most of them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.adapters import base_uri, make_lora_adapter
from tests.support.builtin_server import builtin_server
from tests.support.http import call_json

pytestmark = pytest.mark.timeout(180)
TOKEN = "openai-client-test-token"
QUESTION = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Name a color."}]
PROMPT = "The capital of france is"


@dataclass(frozen=True)
class Target:
    client: openai.OpenAI
    base: str
    adapters: tuple[str, str]
    model_dir: Path  # the base model's directory: its tokenizer gives token ids


def said(error: openai.APIStatusError) -> str:
    """The server's own message (the client's `message` prefixes it with 'Error code: 400 - ')."""
    assert isinstance(error.body, dict), error.body
    return str(error.body["message"])


def openai_client(url: str) -> openai.OpenAI:
    # No retries: a test must see the first answer. The key is not checked by either engine.
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def target(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    root = tmp_path_factory.mktemp("openai-adapters")
    adapters = {
        "tenant-a": make_lora_adapter(tiny_model_dir, root / "a", seed=1).path,
        "tenant-b": make_lora_adapter(tiny_model_dir, root / "b", seed=2, r=8).path,
    }
    token_file = root / "token"
    token_file.write_text(TOKEN)
    with builtin_server(
        tiny_model_dir, token_file, served_name="tiny-base", base_model_uri=base_uri(tiny_model_dir), threads=1
    ) as server:
        for name, path in adapters.items():
            body = {"lora_name": name, "lora_path": str(path)}
            status, answer = call_json(server.url + "/v1/load_lora_adapter", "POST", body, TOKEN)
            assert status == 200, answer
        yield Target(openai_client(server.url), "tiny-base", ("tenant-a", "tenant-b"), tiny_model_dir)


# ------------------------------------------------------------------------ what OpenAI's API promises


def test_models_lists_the_base_model_and_the_adapters_under_it(target: Target) -> None:
    cards = {card.id: card for card in target.client.models.list()}

    assert {target.base, *target.adapters} <= set(cards)
    assert all(card.object == "model" for card in cards.values())
    for name in target.adapters:
        assert getattr(cards[name], "parent", None) == target.base  # vLLM's extension field, kept by the client


def test_chat_answers_with_each_adapter_and_counts_tokens(target: Target) -> None:
    answers = {}
    for model in (target.base, *target.adapters):
        reply = target.client.chat.completions.create(
            model=model, messages=QUESTION, max_completion_tokens=8, temperature=0
        )
        assert reply.object == "chat.completion"
        assert reply.model == model
        [choice] = reply.choices
        assert choice.message.role == "assistant"
        assert choice.finish_reason in ("stop", "length")
        assert reply.usage is not None
        assert 0 < reply.usage.completion_tokens <= 8
        assert reply.usage.prompt_tokens > 10  # the system message and the template's markers count
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
        answers[model] = choice.message.content
    # the adapters' weights are applied (a few training steps may leave one answer as the base's: vLLM's v1)
    assert any(answers[name] != answers[target.base] for name in target.adapters), answers


def test_streamed_chat_with_include_usage_equals_the_whole_answer(target: Target) -> None:
    model = target.adapters[0]
    whole = target.client.chat.completions.create(model=model, messages=QUESTION, max_tokens=12, temperature=0)

    chunks = list(
        target.client.chat.completions.create(
            model=model,
            messages=QUESTION,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        whole.choices[0].finish_reason
    ]
    assert chunks[-1].choices == []
    assert chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_completions_stream_and_whole_agree(target: Target) -> None:
    model = target.adapters[1]
    whole = target.client.completions.create(model=model, prompt=PROMPT, max_tokens=10, temperature=0)

    chunks = list(
        target.client.completions.create(
            model=model,
            prompt=PROMPT,
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    assert whole.object == "text_completion"
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage == whole.usage
    assert whole.usage is not None and 0 < whole.usage.completion_tokens <= 10


def test_a_stop_sequence_ends_the_text_before_it(target: Target) -> None:
    free = target.client.completions.create(
        model=target.base, prompt=PROMPT, max_tokens=20, temperature=0, extra_body={"ignore_eos": True}
    )
    text = free.choices[0].text
    assert len(text.strip()) > 4, text
    stop = text.strip()[len(text.strip()) // 2 :][:2]

    stopped = target.client.completions.create(
        model=target.base, prompt=PROMPT, max_tokens=20, temperature=0, stop=[stop], extra_body={"ignore_eos": True}
    )

    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == text[: text.find(stop)]


def test_the_same_seed_gives_the_same_sampled_answer(target: Target) -> None:
    def sample(seed: int) -> str:
        reply = target.client.chat.completions.create(
            model=target.adapters[0],
            messages=QUESTION,
            max_tokens=12,
            temperature=1.0,
            top_p=0.95,
            seed=seed,
        )
        return str(reply.choices[0].message.content)

    first = sample(1234)

    assert sample(1234) == first
    assert len({first, *(sample(seed) for seed in (1, 2, 3))}) > 1  # the seed does choose the sample


def test_n_choices_are_sampled_each_with_its_own_seed_and_all_counted(target: Target) -> None:
    def ask() -> Any:
        return target.client.chat.completions.create(
            model=target.adapters[1],
            messages=QUESTION,
            n=3,
            max_tokens=6,
            temperature=1.0,
            seed=7,
            extra_body={"ignore_eos": True},  # vLLM's extension, also the built-in engine's: exactly 6 tokens
        )

    reply = ask()
    single = target.client.chat.completions.create(
        model=target.adapters[1],
        messages=QUESTION,
        max_tokens=6,
        extra_body={"ignore_eos": True},
    )

    texts = [c.message.content for c in reply.choices]
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert len(set(texts)) > 1  # not three copies of one sample
    assert [c.message.content for c in ask().choices] == texts  # seeded: reproducible, choice by choice
    assert reply.usage.completion_tokens == 3 * 6
    assert reply.usage.prompt_tokens == single.usage.prompt_tokens  # the prompt counts once


def test_n_choices_stream_interleaved_by_index(target: Target) -> None:
    chunks = list(
        target.client.completions.create(
            model=target.base,
            prompt=PROMPT,
            n=2,
            max_tokens=5,
            temperature=1.0,
            seed=3,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    whole = target.client.completions.create(
        model=target.base, prompt=PROMPT, n=2, max_tokens=5, temperature=1.0, seed=3, extra_body={"ignore_eos": True}
    )

    for index in (0, 1):
        streamed = "".join(c.choices[0].text for c in chunks if c.choices and c.choices[0].index == index)
        assert streamed == whole.choices[index].text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 10


def test_n_chat_choices_stream_each_with_its_role_and_finish(target: Target) -> None:
    ask: dict[str, Any] = {
        "model": target.adapters[0],
        "messages": QUESTION,
        "n": 2,
        "max_tokens": 5,
        "temperature": 1.0,
        "seed": 11,
    }
    whole = target.client.chat.completions.create(**ask)
    chunks = [c for c in target.client.chat.completions.create(**ask, stream=True) if c.choices]

    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices[0].index == index]
        assert mine[0].delta.role == "assistant"
        assert "".join(c.delta.content or "" for c in mine) == whole.choices[index].message.content
        assert [c.finish_reason for c in mine if c.finish_reason] == [whole.choices[index].finish_reason]


def test_chat_logprobs_give_the_top_alternatives_of_every_token(target: Target) -> None:
    reply = target.client.chat.completions.create(
        model=target.adapters[0],
        messages=QUESTION,
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )

    [choice] = reply.choices
    assert choice.logprobs is not None and choice.logprobs.content is not None
    entries = choice.logprobs.content
    assert len(entries) == reply.usage.completion_tokens  # one entry per generated token
    for entry in entries:
        assert entry.logprob <= 0.0
        assert len(entry.top_logprobs) == 3
        values = [t.logprob for t in entry.top_logprobs]
        assert values == sorted(values, reverse=True)
        # greedy: the chosen token is the most likely one of the model's own distribution
        assert entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-3)


def test_streamed_chat_logprobs_equal_the_whole_answers(target: Target) -> None:
    ask: dict[str, Any] = {
        "model": target.base,
        "messages": QUESTION,
        "max_tokens": 6,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 2,
    }
    whole = target.client.chat.completions.create(**ask)
    chunks = list(target.client.chat.completions.create(**ask, stream=True))

    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content or []]
    expected = whole.choices[0].logprobs.content
    assert [e.token for e in streamed] == [e.token for e in expected]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in expected], abs=1e-3)


def test_completion_logprobs_in_the_legacy_shape(target: Target) -> None:
    reply = target.client.completions.create(
        model=target.adapters[1],
        prompt=PROMPT,
        max_tokens=6,
        temperature=0,
        logprobs=2,
        extra_body={"ignore_eos": True},
    )

    logprobs = reply.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.tokens is not None and logprobs.token_logprobs is not None
    assert logprobs.top_logprobs is not None and logprobs.text_offset is not None
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 6
    assert logprobs.text_offset[0] == 0 and logprobs.text_offset == sorted(logprobs.text_offset)
    for token, logprob, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True):
        # the two alternatives and, when not among them, the sampled token; fewer when two tokens read the same
        assert 1 <= len(top) <= 3
        assert top[token] == pytest.approx(logprob, abs=1e-3)
        assert logprob == pytest.approx(max(top.values()), abs=1e-3)  # greedy


def test_echo_puts_the_prompt_in_front_of_the_text(target: Target) -> None:
    ask: dict[str, Any] = {"model": target.adapters[1], "prompt": PROMPT, "max_tokens": 6, "temperature": 0}
    plain = target.client.completions.create(**ask)

    echoed = target.client.completions.create(**ask, echo=True)
    streamed = [c for c in target.client.completions.create(**ask, echo=True, stream=True) if c.choices]

    assert echoed.choices[0].text == PROMPT + plain.choices[0].text
    assert "".join(c.choices[0].text for c in streamed) == echoed.choices[0].text
    assert echoed.usage == plain.usage


def test_a_logit_bias_of_100_makes_a_token_the_only_choice(target: Target) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(target.model_dir)
    token = tokenizer.encode(" the", add_special_tokens=False)[-1]

    reply = target.client.completions.create(
        model=target.adapters[0],
        prompt=PROMPT,
        max_tokens=4,
        temperature=0,
        logit_bias={str(token): 100},
        extra_body={"ignore_eos": True},
    )

    assert reply.choices[0].text == tokenizer.decode([token] * 4)


def test_an_unknown_model_is_a_not_found_error(target: Target) -> None:
    with pytest.raises(openai.NotFoundError) as chat:
        target.client.chat.completions.create(model="nobody", messages=QUESTION, max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        target.client.completions.create(model="nobody", prompt=PROMPT, max_tokens=2)

    assert "nobody" in chat.value.message
    assert chat.value.status_code == 404


@pytest.mark.parametrize(
    "bad",
    [{"top_logprobs": 21, "logprobs": True}, {"n": 0}, {"temperature": -1.0}, {"max_tokens": 0}],
    ids=["top_logprobs-21", "n-0", "negative-temperature", "max_tokens-0"],
)
def test_out_of_range_parameters_are_bad_requests(target: Target, bad: dict[str, Any]) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        target.client.chat.completions.create(model=target.base, messages=QUESTION, **bad)

    assert error.value.status_code == 400
    assert error.value.message


# ------------------------------------------------------------------------ built-in engine only


def test_models_retrieve_gives_one_model_and_404_for_an_unknown_one(target: Target) -> None:
    adapter = target.client.models.retrieve(target.adapters[0])
    base = target.client.models.retrieve(target.base)

    assert (adapter.id, adapter.object, getattr(adapter, "parent", None)) == (target.adapters[0], "model", target.base)
    assert (base.id, getattr(base, "parent", None)) == (target.base, None)
    with pytest.raises(openai.NotFoundError) as error:
        target.client.models.retrieve("nobody")
    assert error.value.type == "NotFoundError"
    assert "nobody" in error.value.message and "GET /v1/models" in error.value.message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("response_format", {"type": "json_object"}),
        ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}),
        ("tools", [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]),
        ("tool_choice", "auto"),
        ("functions", [{"name": "weather", "parameters": {"type": "object"}}]),
        ("function_call", "auto"),
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("modalities", ["text", "audio"]),
        ("prediction", {"type": "content", "content": "x"}),
        ("reasoning_effort", "low"),
        ("verbosity", "low"),
        ("web_search_options", {"search_context_size": "low"}),
        ("store", True),
        ("service_tier", "flex"),
    ],
)
def test_chat_fields_the_engine_does_not_implement_are_refused_by_name(target: Target, field: str, value: Any) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        target.client.chat.completions.create(model=target.base, messages=QUESTION, max_tokens=2, **{field: value})

    assert error.value.param == field
    assert said(error.value).startswith(f"{field}: ")
    assert "built-in engine" in said(error.value) or "leave it out" in said(error.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [("suffix", " the end"), ("best_of", 2)],
)
def test_completion_fields_the_engine_does_not_implement_are_refused_by_name(
    target: Target, field: str, value: Any
) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        target.client.completions.create(model=target.base, prompt=PROMPT, max_tokens=2, **{field: value})

    assert error.value.param == field
    assert said(error.value).startswith(f"{field}: ")


def test_unknown_fields_are_refused_and_message_fields_named_with_their_place(target: Target) -> None:
    with pytest.raises(openai.BadRequestError) as unknown:
        target.client.chat.completions.create(
            model=target.base,
            messages=QUESTION,
            max_tokens=2,
            extra_body={"top_k": 5},
        )
    named = [{"role": "user", "content": "hi", "name": "alice"}]
    with pytest.raises(openai.BadRequestError) as message_field:
        target.client.chat.completions.create(model=target.base, messages=named, max_tokens=2)
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]
    with pytest.raises(openai.BadRequestError) as image_part:
        target.client.chat.completions.create(model=target.base, messages=image, max_tokens=2)

    assert unknown.value.param == "top_k"
    assert "unrecognized request argument" in unknown.value.message
    assert message_field.value.param == "messages[0].name"
    assert image_part.value.param == "messages[0].content[0].type"
    assert "text-only" in image_part.value.message


def test_neutral_values_and_fields_without_effect_are_accepted(target: Target) -> None:
    plain = target.client.chat.completions.create(model=target.base, messages=QUESTION, max_tokens=6)

    with_neutral = target.client.chat.completions.create(
        model=target.base,
        messages=QUESTION,
        max_tokens=6,
        response_format={"type": "text"},
        tool_choice="none",
        frequency_penalty=0,
        presence_penalty=0,
        logit_bias={},
        modalities=["text"],
        store=False,
        service_tier="auto",
        user="tenant-user-42",
        safety_identifier="hash-42",
        prompt_cache_key="k",
        metadata={"team": "search"},
        n=None,  # null is "not given": the defaults apply
        seed=None,
        logprobs=None,
        stop=None,
    )

    assert with_neutral.choices[0].message.content == plain.choices[0].message.content


def test_bad_values_name_the_field(target: Target) -> None:
    with pytest.raises(openai.BadRequestError) as best_of:
        target.client.completions.create(model=target.base, prompt=PROMPT, n=3, best_of=2)
    with pytest.raises(openai.BadRequestError) as top_logprobs:
        target.client.chat.completions.create(
            model=target.base,
            messages=QUESTION,
            top_logprobs=2,
        )
    with pytest.raises(openai.BadRequestError) as too_many:
        target.client.chat.completions.create(model=target.base, messages=QUESTION, n=17)

    with pytest.raises(openai.BadRequestError) as echo_logprobs:
        target.client.completions.create(model=target.base, prompt=PROMPT, echo=True, logprobs=1)
    with pytest.raises(openai.BadRequestError) as too_strong:
        target.client.completions.create(model=target.base, prompt=PROMPT, logit_bias={"5": 101})
    with pytest.raises(openai.BadRequestError) as outside:
        target.client.completions.create(model=target.base, prompt=PROMPT, logit_bias={"1048576": 1})

    assert (best_of.value.param, top_logprobs.value.param, too_many.value.param) == ("best_of", "top_logprobs", "n")
    assert echo_logprobs.value.param == "echo" and "prompt's logprobs" in said(echo_logprobs.value)
    assert too_strong.value.param == "logit_bias" and "between -100 and 100" in said(too_strong.value)
    assert said(outside.value).startswith("logit_bias: ") and "vocabulary" in said(outside.value)
    assert "logprobs: true" in top_logprobs.value.message
    assert said(too_many.value).startswith("n: ")


def test_token_id_prompts_are_accepted_and_checked_against_the_vocabulary(target: Target) -> None:
    ids = [5, 17, 42, 99]
    by_ids = target.client.completions.create(model=target.base, prompt=ids, max_tokens=4, temperature=0)
    assert by_ids.usage is not None and by_ids.usage.prompt_tokens == len(ids)

    with pytest.raises(openai.BadRequestError) as error:
        target.client.completions.create(model=target.base, prompt=[10**7], max_tokens=4)
    assert "vocabulary" in error.value.message


def test_frequency_and_presence_penalties_follow_openais_formula(target: Target) -> None:
    penalties = {"frequency_penalty": 0.9, "presence_penalty": 0.6}
    ask: dict[str, Any] = {"model": target.base, "prompt": PROMPT, "max_tokens": 16, "temperature": 0}
    plain = target.client.completions.create(**ask, extra_body={"ignore_eos": True})
    penalized = target.client.completions.create(**ask, **penalties, extra_body={"ignore_eos": True})

    assert penalized.choices[0].text == _greedy_with_penalties(target.model_dir, PROMPT, 16, **penalties)
    assert penalized.choices[0].text != plain.choices[0].text  # the penalties did change the greedy answer


def _greedy_with_penalties(
    model_dir: Path, prompt: str, tokens: int, frequency_penalty: float, presence_penalty: float
) -> str:
    """The reference: OpenAI's definition, logit[j] -= count[j] * frequency_penalty + (count[j] > 0) *
    presence_penalty over the tokens generated so far, then greedy; one full forward pass per token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids: list[int] = tokenizer(prompt).input_ids
    generated: list[int] = []
    with torch.inference_mode():
        for _ in range(tokens):
            logits = model(input_ids=torch.tensor([ids + generated])).logits[0, -1].float()
            counts = torch.bincount(torch.tensor(generated, dtype=torch.long), minlength=logits.shape[-1])
            logits -= counts * frequency_penalty + (counts > 0) * presence_penalty
            generated.append(int(logits.argmax()))
    return str(tokenizer.decode(generated, skip_special_tokens=True))


def test_concurrent_requests_in_mixed_batches_answer_as_they_do_alone(target: Target) -> None:
    """n, logprobs and seeds fall out of the mixed batch: each request's rows are rows like any other."""
    requests: list[dict[str, Any]] = [
        {"model": model, "messages": QUESTION, "max_tokens": 6, "logprobs": True, "top_logprobs": 2, **sampling}
        for model in (target.base, *target.adapters)
        for sampling in ({"temperature": 0}, {"temperature": 1.0, "seed": 5, "n": 2})
    ]
    alone = [_answer(target.client.chat.completions.create(**r)) for r in requests]

    async def all_at_once() -> list[Any]:
        client = openai.AsyncOpenAI(base_url=target.client.base_url, api_key="unused", max_retries=0, timeout=120)
        async with client:
            return await asyncio.gather(*(client.chat.completions.create(**r) for r in requests * 2))

    steps_before = _batch_steps(target)
    together = [_answer(reply) for reply in asyncio.run(all_at_once())]
    steps = _batch_steps(target) - steps_before

    rows = 2 * sum(r.get("n", 1) for r in requests)
    assert steps < rows * 6 / 2, f"{rows} rows of 6 tokens took {steps} steps: they were not batched together"
    for got, expected in zip(together, alone * 2, strict=True):
        assert [text for text, _ in got] == [text for text, _ in expected]
        for (_, got_logprobs), (_, expected_logprobs) in zip(got, expected, strict=True):
            assert got_logprobs == pytest.approx(expected_logprobs, abs=1e-3)


def _answer(reply: Any) -> list[tuple[str, list[float]]]:
    return [(c.message.content, [e.logprob for e in c.logprobs.content]) for c in reply.choices]


def _batch_steps(target: Target) -> float:
    """Forward steps the built-in engine has run (its batch-size histogram's count)."""
    status, text = call_json(str(target.client.base_url).removesuffix("/v1/") + "/metrics", "GET")
    assert status == 200, text
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith("peft_serve_batch_rows_count"))
