"""Unit: AdapterDeployment engine builders, source resolution and status (pure functions; the agent
reports are hand-written PodReports, the FineTuneJobs plain dicts)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from peft_operator.adapterdeployment.engine import render_engine_deployment, render_engine_service
from peft_operator.adapterdeployment.sources import DesiredAdapter, resolve_adapters
from peft_operator.adapterdeployment.status import (
    MAX_LOAD_ATTEMPTS,
    LoadFailure,
    PodReport,
    compute_status,
    may_retry,
    pod_is_complete,
)
from peft_operator.api import AdapterDeployment, AdapterDeploymentStatus
from peft_operator.api.adapterdeployment import AdapterState, AdapterStatus, Engine
from peft_operator.settings import OperatorSettings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SETTINGS = OperatorSettings(runtime_image="registry.example/peft-runtime:1.2.3")
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
A, B = "a" * 64, "b" * 64


def _adep(example: str = "adapterdeployment-quickstart.yaml") -> AdapterDeployment:
    body = yaml.safe_load((EXAMPLES / example).read_text())
    body["metadata"].update({"namespace": "tenant-a", "uid": "uid-1"})
    return AdapterDeployment.model_validate(body)


def _containers(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}


def test_builtin_engine_runs_server_and_agent_sharing_the_adapter_volume() -> None:
    deployment = render_engine_deployment(_adep(), SETTINGS)
    containers = _containers(deployment)
    assert containers["engine"]["command"][:2] == ["peft-runtime", "serve"]
    assert "--max-adapters=64" in containers["engine"]["command"]
    assert containers["adapter-agent"]["command"][:2] == ["peft-runtime", "agent"]
    assert "--max-rank=64" in containers["adapter-agent"]["command"]
    assert "--max-adapters=64" in containers["adapter-agent"]["command"]
    assert "--served-model-name=HuggingFaceTB/SmolLM2-135M-Instruct" in containers["engine"]["command"]
    for container in (containers["engine"], containers["adapter-agent"]):
        assert {"name": "adapters", "mountPath": "/adapters"} in container["volumeMounts"]
        token = next(e for e in container["env"] if e["name"] == "PEFT_ADMIN_TOKEN")
        assert token["valueFrom"]["secretKeyRef"] == {"name": "smollm2-shared-admin-token", "key": "token"}
    assert containers["engine"]["resources"]["limits"] == {"nvidia.com/gpu": "1", "memory": "16Gi"}
    assert deployment["spec"]["replicas"] == 2


def test_new_pods_take_traffic_only_with_every_adapter_loaded() -> None:
    deployment = render_engine_deployment(_adep(), SETTINGS)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["readinessGates"] == [{"conditionType": "peft.dev/adapters-loaded"}]
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert pod["automountServiceAccountToken"] is False


def test_vllm_engine_enables_runtime_lora_updates() -> None:
    adep = _adep()
    assert adep.spec.runtime is not None
    adep.spec.runtime.engine = adep.spec.runtime.engine.__class__("vllm")
    engine = _containers(render_engine_deployment(adep, SETTINGS))["engine"]
    assert engine["command"][:3] == ["vllm", "serve", "HuggingFaceTB/SmolLM2-135M-Instruct"]
    assert "--enable-lora" in engine["command"] and "--max-lora-rank=64" in engine["command"]
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in engine["env"]


@pytest.mark.parametrize("engine", ["builtin", "vllm"])
def test_clients_reach_the_engine_only_through_the_gate(engine: str) -> None:
    adep = _adep()
    assert adep.spec.runtime is not None
    adep.spec.runtime.engine = Engine(engine)
    containers = _containers(render_engine_deployment(adep, SETTINGS))
    service_port = render_engine_service(adep)["spec"]["ports"][0]

    server, gate = containers["engine"], containers["engine-gate"]
    assert "--host=127.0.0.1" in server["command"] and "--port=8080" in server["command"]
    assert "ports" not in server and "readinessProbe" not in server
    assert gate["command"] == ["peft-runtime", "gate", "--engine-url=http://127.0.0.1:8080", "--port=8000"]
    assert gate["ports"] == [{"name": service_port["targetPort"], "containerPort": service_port["port"]}]
    assert gate["readinessProbe"]["httpGet"] == {"path": "/health", "port": 8000}
    assert "--engine-url=http://127.0.0.1:8080" in containers["adapter-agent"]["command"]


def test_pvc_adapter_claims_are_mounted_read_only_for_the_agent() -> None:
    deployment = render_engine_deployment(_adep(), SETTINGS, adapter_claims=["team-adapters"])
    agent = _containers(deployment)["adapter-agent"]
    assert {"name": "adapters-team-adapters", "mountPath": "/mnt/pvc/team-adapters", "readOnly": True} in agent[
        "volumeMounts"
    ]


def test_service_selects_the_engine_pods() -> None:
    service = render_engine_service(_adep())
    assert service["spec"]["selector"]["peft.dev/adapterdeployment"] == "smollm2-shared"
    assert service["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http"}]


def test_finetunejob_sources_resolve_only_once_the_job_succeeded() -> None:
    jobs = {
        "support-bot-v1": {"status": {"phase": "Running"}},
    }
    desired = resolve_adapters(_adep(), jobs.get)
    assert desired[0].waiting is not None and "Running" in desired[0].waiting
    assert desired[1] == DesiredAdapter(
        "legal-summarizer",
        uri="s3://tenant-b-adapters/legal/v3",
        sha256=desired[1].sha256,
        credentials_secret="tenant-b-s3",
    )
    jobs["support-bot-v1"] = {
        "status": {
            "phase": "Succeeded",
            "adapter": {"uri": "s3://a/b", "sha256": A, "sizeBytes": 1, "baseModel": "hf://o/m", "method": "lora"},
        }
    }
    assert resolve_adapters(_adep(), jobs.get)[0] == DesiredAdapter(
        "support-bot", uri="s3://a/b", sha256=A, fine_tune_job="support-bot-v1"
    )
    jobs["support-bot-v1"] = {"status": {"phase": "Failed"}}
    assert "Failed" in (resolve_adapters(_adep(), jobs.get)[0].refused or "")
    assert "does not exist" in (resolve_adapters(_adep(), {}.get)[0].waiting or "")


def test_a_deleted_jobs_adapter_stays_served_from_the_status_record() -> None:
    record = AdapterStatus(
        name="support-bot", state=AdapterState.LOADED, digest=A, uri="s3://a/b", fine_tune_job="support-bot-v1"
    )
    (kept, _) = resolve_adapters(_adep(), {}.get, {"support-bot": record})
    assert (kept.uri, kept.sha256, kept.loadable) == ("s3://a/b", A, True)
    assert kept.source_gone is not None and "support-bot-v1 was deleted" in kept.source_gone
    status = compute_status(
        AdapterDeploymentStatus(), [kept], [PodReport("p1", loaded={"support-bot": A})], 1, 1, None, NOW
    )
    assert _state(status, "support-bot").state is AdapterState.LOADED
    assert _state(status, "support-bot").uri == "s3://a/b"  # the record survives the next pass, and restarts
    # A record from another job is not reused: a renamed source waits for its own job.
    other = record.model_copy(update={"fine_tune_job": "someone-else"})
    assert resolve_adapters(_adep(), {}.get, {"support-bot": other})[0].waiting is not None


def test_file_uris_are_never_sent_to_agents() -> None:
    adep = _adep()
    adep.spec.adapters[1].source.uri = "file:///etc"
    assert "file:// works only in local mode" in (resolve_adapters(adep, {}.get)[1].refused or "")
    job = {
        "status": {
            "phase": "Succeeded",
            "adapter": {
                "uri": "file:///etc/shadow",
                "sha256": A,
                "sizeBytes": 1,
                "baseModel": "hf://o/m",
                "method": "lora",
            },
        }
    }
    assert resolve_adapters(adep, {"support-bot-v1": job}.get)[0].loadable is False


DESIRED = [DesiredAdapter("tenant-a", uri="s3://x/a", sha256=A), DesiredAdapter("tenant-b", uri="s3://x/b", sha256=B)]


def _state(status: AdapterDeploymentStatus, name: str) -> AdapterStatus:
    return next(a for a in status.adapters if a.name == name)


def _condition(status: AdapterDeploymentStatus, type_: str) -> tuple[str, str]:
    c = next(c for c in status.conditions if c.type == type_)
    return c.status.value, c.reason


def test_ready_only_when_every_adapter_answers_on_every_replica() -> None:
    both = PodReport("p1", loaded={"tenant-a": A, "tenant-b": B})
    half = PodReport("p2", loaded={"tenant-a": A})
    status = compute_status(AdapterDeploymentStatus(), DESIRED, [both, half], 2, 3, "http://e", NOW)
    assert _state(status, "tenant-a").state is AdapterState.LOADED
    assert _state(status, "tenant-b").state is AdapterState.LOADING
    assert _state(status, "tenant-b").loaded_replicas == 1
    assert _condition(status, "Ready") == ("False", "AdaptersNotReady")
    assert status.ready_replicas == 1 and status.adapters_ready == "1/2"
    full = compute_status(
        status, DESIRED, [both, PodReport("p2", loaded={"tenant-a": A, "tenant-b": B})], 2, 3, "http://e", NOW
    )
    assert _condition(full, "Ready") == ("True", "AllAdaptersLoaded")
    assert _condition(full, "Progressing")[0] == "False"
    assert full.ready_replicas == 2 and full.adapters_ready == "2/2"


def test_a_failed_adapter_degrades_but_the_others_keep_serving() -> None:
    pod = PodReport(
        "p1",
        loaded={"tenant-a": A},
        failures={"tenant-b": LoadFailure("ChecksumMismatch", "model.safetensors differs")},
    )
    status = compute_status(AdapterDeploymentStatus(), DESIRED, [pod], 1, 1, None, NOW)
    failed = _state(status, "tenant-b")
    assert failed.state is AdapterState.FAILED and failed.message is not None
    assert failed.message.startswith("ChecksumMismatch: model.safetensors differs (pod p1)")
    assert failed.failed_attempts == 1 and failed.last_attempt_time == NOW
    assert _condition(status, "Degraded") == ("True", "AdapterFailed")
    assert pod_is_complete(pod, DESIRED, frozenset({"tenant-b"}))  # the pod still takes traffic for tenant-a
    assert _state(status, "tenant-a").state is AdapterState.LOADED


def test_failed_loads_back_off_exponentially_and_stop() -> None:
    failed = AdapterStatus(name="x", state=AdapterState.FAILED, digest=A, failed_attempts=3, last_attempt_time=NOW)
    assert not may_retry(failed, A, NOW + timedelta(seconds=19))
    assert may_retry(failed, A, NOW + timedelta(seconds=20))
    assert may_retry(failed, B, NOW)  # a new digest starts over
    exhausted = failed.model_copy(update={"failed_attempts": MAX_LOAD_ATTEMPTS})
    assert not may_retry(exhausted, A, NOW + timedelta(days=1))


def test_held_back_adapter_keeps_its_failed_status() -> None:
    previous = AdapterDeploymentStatus(
        adapters=[AdapterStatus(name="tenant-b", state=AdapterState.FAILED, digest=B, failed_attempts=2, message="m")]
    )
    status = compute_status(
        previous, DESIRED, [PodReport("p1", loaded={"tenant-a": A})], 1, 1, None, NOW, frozenset({"tenant-b"})
    )
    assert _state(status, "tenant-b").failed_attempts == 2
    assert status.ready_replicas == 1


def test_unreachable_agent_is_degraded_and_its_pod_not_ready() -> None:
    lost = PodReport("p1", reachable=False, error="connection refused")
    status = compute_status(AdapterDeploymentStatus(), DESIRED, [lost], 1, 1, None, NOW)
    assert _condition(status, "Degraded") == ("True", "AgentUnreachable")
    assert status.ready_replicas == 0


def test_each_adapter_credentials_secret_gets_its_own_env_prefix() -> None:
    agent = _containers(render_engine_deployment(_adep(), SETTINGS))["adapter-agent"]
    assert agent["envFrom"] == [{"prefix": "ADAPTER_TENANT_B_S3_", "secretRef": {"name": "tenant-b-s3"}}]


def test_an_adapter_from_a_finetunejob_is_read_with_the_jobs_output_credentials() -> None:
    """A private bucket is read with the keys the job wrote it with (spec.output.credentialsSecretRef),
    and the agent gets that Secret under its own prefix."""
    job = {
        "spec": {"output": {"uri": "s3://tenant-a-adapters/support-bot", "credentialsSecretRef": {"name": "a-out"}}},
        "status": {
            "phase": "Succeeded",
            "adapter": {
                "uri": "s3://tenant-a-adapters/support-bot/v1",
                "sha256": A,
                "sizeBytes": 1,
                "baseModel": "hf://o/m",
                "method": "lora",
            },
        },
    }
    desired = resolve_adapters(_adep(), {"support-bot-v1": job}.get)
    assert desired[0].credentials_secret == "a-out"
    secrets = sorted({a.credentials_secret for a in desired if a.credentials_secret})
    agent = _containers(render_engine_deployment(_adep(), SETTINGS, adapter_secrets=secrets))["adapter-agent"]
    assert agent["envFrom"] == [
        {"prefix": "ADAPTER_A_OUT_", "secretRef": {"name": "a-out"}},
        {"prefix": "ADAPTER_TENANT_B_S3_", "secretRef": {"name": "tenant-b-s3"}},
    ]
    # Without output credentials the job's adapter is read with the agent's ambient ones, as before.
    del job["spec"]["output"]["credentialsSecretRef"]
    assert resolve_adapters(_adep(), {"support-bot-v1": job}.get)[0].credentials_secret is None


def test_an_attached_adapter_that_fails_is_listed_but_does_not_degrade_the_deployment() -> None:
    """A tenant's broken adapter is the tenant's problem (reported on its AdapterAttachment): the shared
    deployment stays Ready, its pods stay in service, and the entry still shows the failure."""
    own = DesiredAdapter("support-bot", uri="s3://platform-adapters/bot", sha256="a" * 64)
    tenant = DesiredAdapter("tenant-a/pirate", uri="s3://tenant-a-adapters/p", sha256="b" * 64, attached=True)
    pod = PodReport(name="engine-0", loaded={"support-bot": "a" * 64})
    pod.failures["tenant-a/pirate"] = LoadFailure("SourceUnavailable", "403 Forbidden")

    status = compute_status(AdapterDeploymentStatus(), [own, tenant], [pod], 1, 1, "http://e", NOW)

    conditions = {c.type: (c.status.value, c.reason) for c in status.conditions}
    assert conditions["Ready"] == ("True", "AllAdaptersLoaded") and conditions["Degraded"][0] == "False"
    assert status.ready_replicas == 1 and status.adapters_ready == "1/2"
    entry = next(a for a in status.adapters if a.name == "tenant-a/pirate")
    assert entry.state is AdapterState.FAILED and entry.message is not None and "SourceUnavailable" in entry.message
