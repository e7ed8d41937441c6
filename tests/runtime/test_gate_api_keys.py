"""API keys at the engine gate (access.apiKeys: Required) in front of the REAL built-in engine (tiny Llama,
two real adapters loaded as two tenants' `<namespace>/<name>`), over real HTTP, with the openai client as a
tenant's program uses it: a key calls exactly the models its keyring entry grants, 401/403 say what is wrong
without echoing the key, /v1/models lists only granted models, streaming passes, and rewriting the keyring
file (as the agent does) revokes a key on the next request."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from peft_operator.api.agent import KeyGrant, Keyring, key_digest
from tests.support.adapters import make_lora_adapter
from tests.support.http import call_json

TOKEN = "gate-keys-admin-token"
BASE = "tiny-base"
KEY_A = "tenant-a-key-Zx81"
KEY_B = "tenant-b-key-Qr27"
PLATFORM_KEY = "platform-key-Wm55"
A_MODEL, B_MODEL = "tenant-a/pirate", "tenant-b/formal"
pytestmark = pytest.mark.timeout(180)


def keyring(*grants: tuple[str, list[str]]) -> str:
    return Keyring(keys=[KeyGrant(sha256=key_digest(k), models=m) for k, m in grants]).model_dump_json()


ALL_KEYS = ((KEY_A, [A_MODEL]), (KEY_B, [B_MODEL]), (PLATFORM_KEY, [BASE]))


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from peft_runtime.common.http_edge import BackgroundServer, TokenSource
    from peft_runtime.serving.app import create_app
    from peft_runtime.serving.engine import Engine, EngineConfig

    token_file = tmp_path_factory.mktemp("secrets") / "token"
    token_file.write_text(TOKEN)
    config = EngineConfig(model_dir=tiny_model_dir, served_name=BASE, max_adapters=4, max_rank=8, threads=1)
    core = Engine(config).start()
    http = BackgroundServer(lambda: create_app(core, TokenSource(token_file))).start()
    made = tmp_path_factory.mktemp("adapters")
    for seed, name in enumerate((A_MODEL, B_MODEL), start=3):
        path = make_lora_adapter(tiny_model_dir, made / name.replace("/", "-"), seed=seed).path
        status, body = call_json(
            http.url + "/v1/load_lora_adapter", "POST", {"lora_name": name, "lora_path": str(path)}, TOKEN
        )
        assert status == 200, body
    yield http
    http.stop()
    core.stop()


@pytest.fixture(scope="module")
def keyring_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("access") / "keyring.json"


@pytest.fixture(scope="module")
def gate(engine: Any, keyring_file: Path) -> Iterator[Any]:
    from peft_runtime.common.http_edge import BackgroundServer
    from peft_runtime.gate.app import create_app

    with BackgroundServer(lambda: create_app(engine.url, keyring_file)) as server:
        yield server


def write(path: Path, text: str) -> None:
    """As the agent writes it: whole, then renamed into place."""
    staged = path.with_name(".next")
    staged.write_text(text)
    staged.replace(path)


def client(gate: Any, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gate.url + "/v1", api_key=key, max_retries=0, timeout=60)


def test_before_the_operator_sends_keys_every_call_is_refused_but_health_answers(gate: Any, keyring_file: Path) -> None:
    assert not keyring_file.exists()
    status, answer = call_json(gate.url + "/v1/completions", "POST", {"model": A_MODEL, "prompt": "hi"}, KEY_A)
    assert (status, answer["error"]["reason"]) == (503, "KeyringNotLoaded")
    assert call_json(gate.url + "/health", "GET")[0] == 200


def test_a_key_calls_its_own_adapter_with_the_engines_answer(gate: Any, engine: Any, keyring_file: Path) -> None:
    write(keyring_file, keyring(*ALL_KEYS))
    completion = client(gate, KEY_A).completions.create(model=A_MODEL, prompt="hello", max_tokens=6, temperature=0)

    direct = call_json(
        engine.url + "/v1/completions", "POST", {"model": A_MODEL, "prompt": "hello", "max_tokens": 6, "temperature": 0}
    )
    assert direct[0] == 200 and completion.model == A_MODEL
    assert completion.choices[0].text == direct[1]["choices"][0]["text"]
    chat = client(gate, KEY_B).chat.completions.create(
        model=B_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert chat.model == B_MODEL and chat.choices[0].message.content is not None
    base = client(gate, PLATFORM_KEY).completions.create(model=BASE, prompt="hello", max_tokens=2)
    assert base.model == BASE


def test_another_tenants_adapter_is_403_naming_the_model_and_never_the_key(gate: Any, keyring_file: Path) -> None:
    write(keyring_file, keyring(*ALL_KEYS))
    for model in (B_MODEL, BASE):
        with pytest.raises(openai.PermissionDeniedError) as refused:
            client(gate, KEY_A).completions.create(model=model, prompt="hello", max_tokens=2)
        error = refused.value.body
        assert isinstance(error, dict) and error["reason"] == "ModelNotGranted"
        assert f"does not grant model '{model}'" in error["message"] and A_MODEL in error["message"]
        assert KEY_A not in json.dumps(error)
    status, answer = call_json(
        gate.url + "/v1/chat/completions",
        "POST",
        {"model": B_MODEL, "messages": [{"role": "user", "content": "x"}]},
        KEY_A,
    )
    assert (status, answer["error"]["reason"]) == (403, "ModelNotGranted")


def test_no_key_or_an_unknown_key_is_401(gate: Any, keyring_file: Path) -> None:
    write(keyring_file, keyring(*ALL_KEYS))
    status, answer = call_json(gate.url + "/v1/completions", "POST", {"model": A_MODEL, "prompt": "hi"})
    assert (status, answer["error"]["type"], answer["error"]["reason"]) == (401, "AuthenticationError", "MissingApiKey")
    assert "Authorization: Bearer" in answer["error"]["message"]
    guess = KEY_A[:-1] + "X"
    with pytest.raises(openai.AuthenticationError) as refused:
        client(gate, guess).completions.create(model=A_MODEL, prompt="hello", max_tokens=2)
    assert isinstance(refused.value.body, dict) and refused.value.body["reason"] == "InvalidApiKey"
    assert guess not in json.dumps(refused.value.body)
    status, answer = call_json(gate.url + "/v1/models", "GET", token="Basic " + KEY_A)
    assert status == 401


def test_a_body_without_a_model_is_400_not_forwarded(gate: Any, keyring_file: Path) -> None:
    write(keyring_file, keyring(*ALL_KEYS))
    for body in ({"prompt": "hi"}, ["not", "an", "object"], {"model": 7, "prompt": "hi"}):
        status, answer = call_json(gate.url + "/v1/completions", "POST", body, KEY_A)
        assert (status, answer["error"]["reason"]) == (400, "ModelRequired"), body


def test_models_list_and_cards_show_only_granted_models(gate: Any, engine: Any, keyring_file: Path) -> None:
    write(keyring_file, keyring(*ALL_KEYS))
    everything = {m["id"] for m in call_json(engine.url + "/v1/models", "GET")[1]["data"]}
    assert everything == {BASE, A_MODEL, B_MODEL}

    assert [m.id for m in client(gate, KEY_A).models.list()] == [A_MODEL]
    assert [m.id for m in client(gate, PLATFORM_KEY).models.list()] == [BASE]
    assert client(gate, KEY_A).models.retrieve(A_MODEL).id == A_MODEL
    status, answer = call_json(gate.url + f"/v1/models/{B_MODEL}", "GET", token=KEY_A)
    assert (status, answer["error"]["reason"]) == (403, "ModelNotGranted")


async def _stream(url: str, key: str, body: dict[str, Any]) -> list[str]:
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as session, session.post(url, json=body, headers=headers) as response:
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/event-stream")
        raw = b"".join([chunk async for chunk in response.content.iter_any()]).decode()
    return [line.removeprefix("data: ") for line in raw.splitlines() if line.startswith("data: ")]


def test_a_granted_stream_arrives_as_server_sent_events(gate: Any, keyring_file: Path) -> None:
    write(keyring_file, keyring(*ALL_KEYS))
    body = {"model": A_MODEL, "prompt": "Hello", "max_tokens": 6, "temperature": 0, "stream": True}
    events = asyncio.run(_stream(gate.url + "/v1/completions", KEY_A, body))

    assert events[-1] == "[DONE]" and len(events) >= 3
    assert {json.loads(e)["model"] for e in events[:-1]} == {A_MODEL}


def test_a_key_left_out_of_the_rewritten_keyring_is_revoked_at_the_next_request(gate: Any, keyring_file: Path) -> None:
    write(keyring_file, keyring(*ALL_KEYS))
    assert client(gate, KEY_A).completions.create(model=A_MODEL, prompt="hi", max_tokens=1).model == A_MODEL

    write(keyring_file, keyring((KEY_B, [B_MODEL]), (PLATFORM_KEY, [BASE])))
    with pytest.raises(openai.AuthenticationError):
        client(gate, KEY_A).completions.create(model=A_MODEL, prompt="hi", max_tokens=1)
    assert client(gate, KEY_B).completions.create(model=B_MODEL, prompt="hi", max_tokens=1).model == B_MODEL

    keyring_file.unlink()  # a lost keyring: fail closed
    status, answer = call_json(gate.url + "/v1/completions", "POST", {"model": B_MODEL, "prompt": "hi"}, KEY_B)
    assert (status, answer["error"]["reason"]) == (503, "KeyringNotLoaded")
