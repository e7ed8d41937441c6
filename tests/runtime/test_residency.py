"""More adapters registered than held in memory: the built-in server over real HTTP with a real tiny Llama,
`max_resident` of 2 and eight real peft adapters (six of one shape, one wider, one DoRA). Every request is
answered by its own adapter (texts equal peft's single-adapter reference) while adapters are evicted and
cold-loaded behind it, whether the newcomer takes over the evicted one's tensors or peft adds it anew;
pinned ones stay.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.support.adapters import base_uri, make_lora_adapter, reference_generate
from tests.support.http import call_json

TOKEN = "residency-token"
BASE = "tiny-base"
MAX_RESIDENT = 2
REGISTERED = 8
PROMPT = "The capital of france is"
MAX_TOKENS = 8
WIDE = ("q_proj", "k_proj", "v_proj", "o_proj")
pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("resident-adapters")
    made = {f"tenant-{i}": make_lora_adapter(tiny_model_dir, root / str(i), seed=100 + i).path for i in range(6)}
    # Six share one shape (a cold load takes over the evicted adapter's tensors); these two do not (peft's
    # add_adapter and delete_adapter run for them instead).
    made["tenant-6"] = make_lora_adapter(tiny_model_dir, root / "6", seed=106, r=8, target_modules=WIDE).path
    made["tenant-7"] = make_lora_adapter(tiny_model_dir, root / "7", seed=107, use_dora=True).path
    assert len(made) == REGISTERED
    return made


@pytest.fixture(scope="module")
def expected(tiny_model_dir: Path, adapters: dict[str, Path]) -> dict[str, str]:
    texts = {name: reference_generate(tiny_model_dir, path, [PROMPT], MAX_TOKENS)[0] for name, path in adapters.items()}
    assert len(set(texts.values())) > REGISTERED // 2, "the adapters must answer differently to tell them apart"
    return texts


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    import torch

    from peft_runtime.common.http_edge import BackgroundServer, TokenSource
    from peft_runtime.serving.app import create_app
    from peft_runtime.serving.engine import Engine, EngineConfig

    threads = torch.get_num_threads()
    token_file = tmp_path_factory.mktemp("resident-secrets") / "token"
    token_file.write_text(TOKEN)
    engine = Engine(
        EngineConfig(
            model_dir=tiny_model_dir,
            served_name=BASE,
            base_model_uri=base_uri(tiny_model_dir),
            max_adapters=REGISTERED + 4,
            max_resident=MAX_RESIDENT,
            resident_wait_s=2.0,
            max_rank=8,
            threads=1,
        )
    ).start()
    http = BackgroundServer(lambda: create_app(engine, TokenSource(token_file))).start()
    http.engine = engine  # type: ignore[attr-defined]
    yield http
    http.stop()
    engine.stop()
    torch.set_num_threads(threads)


def _call(server: Any, path: str, body: Any = None, method: str = "POST") -> tuple[int, Any]:
    return call_json(server.url + path, method, body, TOKEN)


def _load(server: Any, name: str, path: Path, *, pinned: bool = False) -> None:
    status, body = _call(server, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path), "pinned": pinned})
    assert status == 200, body


def _complete(server: Any, model: str) -> tuple[int, Any]:
    return _call(server, "/v1/completions", {"model": model, "prompt": PROMPT, "max_tokens": MAX_TOKENS})


def _resident(server: Any) -> set[str]:
    status, body = _call(server, "/v1/models", method="GET")
    assert status == 200, body
    return {card["id"] for card in body["data"] if card.get("resident")}


def _metric(server: Any, name: str) -> float:
    text = server.engine.metrics.render().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith((name + " ", name + "{")))


@pytest.fixture(scope="module")
def registered(server: Any, adapters: dict[str, Path]) -> dict[str, Path]:
    for name, path in adapters.items():
        _load(server, name, path)
    return adapters


def test_loads_register_every_adapter_but_keep_only_max_resident_in_memory(
    server: Any, registered: dict[str, Path]
) -> None:
    status, body = _call(server, "/v1/models", method="GET")
    assert status == 200
    listed = {card["id"] for card in body["data"] if card.get("parent") == BASE}
    assert listed == set(registered), "every registered adapter is listed, resident or not"
    assert len(_resident(server)) == MAX_RESIDENT


def test_every_adapter_answers_as_itself_while_they_swap_in_and_out(
    server: Any, registered: dict[str, Path], expected: dict[str, str]
) -> None:
    evictions_before = _metric(server, "peft_serve_adapter_evictions_total")
    order = [name for _ in range(2) for name in registered]
    random.Random(7).shuffle(order)
    for name in order:
        status, body = _complete(server, name)
        assert status == 200, f"{name}: a registered adapter is never a 404 ({body})"
        assert body["choices"][0]["text"] == expected[name], f"{name} answered with another adapter's weights"
        assert len(_resident(server)) <= MAX_RESIDENT
    assert _metric(server, "peft_serve_adapter_evictions_total") > evictions_before
    assert (
        _metric(server, "peft_serve_adapter_cold_loads_total")
        == _metric(server, "peft_serve_adapter_cold_load_seconds_count")
        > 0
    )
    assert _metric(server, "peft_serve_adapter_resident_seconds_total") > 0
    per_adapter = server.engine.metrics.render().decode()
    assert 'peft_serve_adapter_cold_loads_total{model="tenant-7"}' in per_adapter


def test_the_least_recently_used_adapter_is_the_one_evicted(server: Any, registered: dict[str, Path]) -> None:
    first, second, third = list(registered)[:3]
    for name in (first, second, first):  # `second` is now the least recently used of the two
        assert _complete(server, name)[0] == 200
    assert _complete(server, third)[0] == 200
    assert _resident(server) == {first, third}


def test_concurrent_requests_for_many_adapters_all_get_their_own_answers(
    server: Any, registered: dict[str, Path], expected: dict[str, str]
) -> None:
    answers: dict[int, tuple[str, int, Any]] = {}

    def ask(index: int, name: str) -> None:
        answers[index] = (name, *_complete(server, name))

    names = list(registered)[:4] * 2
    threads = [threading.Thread(target=ask, args=(i, name)) for i, name in enumerate(names)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(answers) == len(names)
    for name, status, body in answers.values():
        # With two slots and four adapters wanted at once, a request may wait for a slot; it must either be
        # answered by its own adapter or told to retry (503 ResidentSlotsBusy), never served by another.
        if status == 200:
            assert body["choices"][0]["text"] == expected[name]
        else:
            assert status == 503 and body["error"]["reason"] == "ResidentSlotsBusy", body
    assert any(status == 200 for _, status, _ in answers.values())


def test_a_pinned_adapter_stays_resident_through_a_sweep_of_the_others(
    server: Any, registered: dict[str, Path], expected: dict[str, str]
) -> None:
    pinned = "tenant-pinned"
    _load(server, pinned, registered["tenant-0"], pinned=True)
    try:
        for name in list(registered)[1:]:
            assert _complete(server, name)[0] == 200
            assert pinned in _resident(server)
        status, body = _complete(server, pinned)
        assert status == 200 and body["choices"][0]["text"] == expected["tenant-0"]
    finally:
        assert _call(server, "/v1/unload_lora_adapter", {"lora_name": pinned})[0] == 200


def test_pinned_adapters_cannot_take_every_slot(server: Any, registered: dict[str, Path]) -> None:
    names = [f"pin-{i}" for i in range(MAX_RESIDENT + 1)]
    try:
        for name in names[:MAX_RESIDENT]:
            _load(server, name, registered["tenant-1"], pinned=True)
        status, body = _call(
            server,
            "/v1/load_lora_adapter",
            {"lora_name": names[-1], "lora_path": str(registered["tenant-2"]), "pinned": True},
        )
        assert status == 507, body
        assert "maxResident" in body["error"]["message"]
        # Unpinned adapters still answer, from outside memory they cannot be cold-loaded into: a clear 503.
        status, body = _complete(server, "tenant-3")
        assert status == 503 and body["error"]["reason"] == "ResidentSlotsBusy", body
    finally:
        for name in names:
            _call(server, "/v1/unload_lora_adapter", {"lora_name": name})
    assert _complete(server, "tenant-3")[0] == 200


def test_unloading_an_evicted_adapter_removes_it(server: Any, registered: dict[str, Path]) -> None:
    name = "tenant-gone"
    _load(server, name, registered["tenant-4"])
    for other in ("tenant-5", "tenant-6"):  # two other requests push it out of the two slots
        assert _complete(server, other)[0] == 200
    assert name not in _resident(server)
    assert _call(server, "/v1/unload_lora_adapter", {"lora_name": name})[0] == 200
    status, body = _complete(server, name)
    assert status == 404 and body["error"]["reason"] == "ModelNotFound"
