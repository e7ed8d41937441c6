"""Unit (pure logic, a fake agent in memory instead of the HTTP agent): one engine pod's sync makes its
loaded set equal to the desired adapters, and a problem with one adapter never stops the others."""

from __future__ import annotations

from peft_operator.adapterdeployment.agent_client import AgentRefusal, AgentUnreachableError
from peft_operator.adapterdeployment.reconcile import sync_pod
from peft_operator.adapterdeployment.sources import DesiredAdapter
from peft_operator.api.adapterdeployment import AdapterState
from peft_operator.api.agent import AdapterList, AdapterReport, EngineInfo, SourceCredentials

A, B, C = "a" * 64, "b" * 64, "c" * 64


class FakeAgent:
    """What the engine holds, and every call the sync made, in order."""

    def __init__(self, holds: dict[str, str], refuse: dict[str, str] | None = None, reachable: bool = True):
        self.holds = dict(holds)
        self.refuse = refuse or {}
        self.reachable = reachable
        self.calls: list[str] = []
        self.credentials: dict[str, SourceCredentials | None] = {}
        self.pins: dict[str, bool] = {}  # the built-in engine reports pinned (and resident); vLLM does not

    def loaded(self) -> AdapterList:
        if not self.reachable:
            raise AgentUnreachableError("connection refused")
        reports = [
            AdapterReport(name=n, state=AdapterState.LOADED, digest=d, pinned=self.pins.get(n), resident=n in self.pins)
            for n, d in self.holds.items()
        ]
        return AdapterList(engine=EngineInfo(url="http://engine", engine="builtin"), adapters=reports)

    def load(
        self,
        name: str,
        uri: str,
        sha256: str,
        credentials_env_prefix: str | None = None,
        credentials: SourceCredentials | None = None,
        *,
        pinned: bool = False,
    ) -> AdapterReport:
        self.calls.append(f"load {name} {sha256[:1]}" + (" pinned" if pinned else ""))
        self.pins[name] = pinned
        self.credentials[name] = credentials
        if name in self.refuse:
            raise AgentRefusal(422, self.refuse[name], f"{name} cannot be loaded")
        self.holds[name] = sha256
        return AdapterReport(name=name, state=AdapterState.LOADED, digest=sha256)

    def unload(self, name: str) -> None:
        self.calls.append(f"unload {name}")
        self.holds.pop(name)


def _desired(name: str, sha256: str) -> DesiredAdapter:
    return DesiredAdapter(name, uri=f"s3://adapters/{name}", sha256=sha256)


def test_sync_unloads_removed_loads_new_replaces_changed_and_keeps_the_rest() -> None:
    agent = FakeAgent(holds={"kept": A, "changed": A, "removed": A})
    desired = [_desired("kept", A), _desired("changed", B), _desired("new", C)]

    report = sync_pod(agent, "engine-0", desired, held_back=frozenset())  # type: ignore[arg-type]

    assert agent.calls == ["unload removed", "load changed b", "load new c"]  # nothing for the unchanged one
    assert agent.holds == {"kept": A, "changed": B, "new": C}
    assert report.reachable and report.loaded == {"kept": A, "changed": B, "new": C}


def test_one_refused_adapter_fails_alone_and_held_back_ones_are_not_retried() -> None:
    agent = FakeAgent(holds={}, refuse={"corrupt": "DigestMismatch"})
    desired = [_desired("corrupt", A), _desired("good", B), _desired("backing-off", C)]

    report = sync_pod(agent, "engine-0", desired, held_back=frozenset({"backing-off"}))  # type: ignore[arg-type]

    assert agent.calls == ["load corrupt a", "load good b"]
    assert report.loaded == {"good": B}
    assert report.failures["corrupt"].reason == "DigestMismatch"


def test_adapters_not_loadable_yet_are_neither_loaded_nor_unloaded_elsewhere() -> None:
    agent = FakeAgent(holds={})
    waiting = DesiredAdapter("training", waiting="Waiting for FineTuneJob t-v1 (Running) to succeed.")

    report = sync_pod(agent, "engine-0", [waiting], held_back=frozenset())  # type: ignore[arg-type]

    assert agent.calls == [] and report.loaded == {} and report.failures == {}


def test_an_unreachable_agent_is_reported_without_raising() -> None:
    report = sync_pod(FakeAgent(holds={}, reachable=False), "engine-1", [_desired("x", A)], frozenset())  # type: ignore[arg-type]
    assert not report.reachable and report.error == "connection refused"


def test_an_attached_adapters_credentials_go_with_its_own_load_only() -> None:
    agent = FakeAgent(holds={})
    keys = SourceCredentials.model_validate({"AWS_ACCESS_KEY_ID": "tenant-a-key", "AWS_SECRET_ACCESS_KEY": "s3cr3t"})
    attached = DesiredAdapter("tenant-a/pirate", uri="s3://tenant-a/pirate", sha256=A, credentials=keys)

    sync_pod(agent, "engine-0", [_desired("own", B), attached], held_back=frozenset())  # type: ignore[arg-type]

    assert agent.credentials == {"own": None, "tenant-a/pirate": keys}
    assert "s3cr3t" not in repr(attached) and "tenant-a-key" not in repr(keys)


def test_pinning_or_unpinning_a_held_adapter_loads_it_again_with_the_new_pin() -> None:
    agent = FakeAgent(holds={"hot": A, "cold": B, "same": C})
    agent.pins = {"hot": False, "cold": True, "same": True}
    desired = [
        DesiredAdapter("hot", uri="s3://adapters/hot", sha256=A, pinned=True),
        _desired("cold", B),
        DesiredAdapter("same", uri="s3://adapters/same", sha256=C, pinned=True),
    ]

    report = sync_pod(agent, "engine-0", desired, held_back=frozenset())  # type: ignore[arg-type]

    assert agent.calls == ["load hot a pinned", "load cold b"]
    assert agent.pins == {"hot": True, "cold": False, "same": True}
    assert report.resident == {"hot", "cold", "same"}
