"""Unit: what the operator applies to a targetRef Deployment (pure functions; the live Deployment is a
hand-written dict as the apiserver returns it, defaults included)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from kubernetes.client import ApiException

from peft_operator.adapterdeployment.target import (
    TARGET_CONFIG_ANNOTATION,
    TARGET_LABEL,
    engine_configured,
    field_conflict,
    flags_to_add,
    is_applied,
    render_target_apply,
    render_target_release,
)
from peft_operator.api import AdapterDeployment, AdapterDeploymentStatus
from peft_operator.settings import OperatorSettings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SETTINGS = OperatorSettings(runtime_image="registry.example/peft-runtime:1.2.3")
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
VLLM_ARGS = ["--model=/models/llama", "--enable-lora", "--max-loras=16", "--max-cpu-loras=128", "--max-lora-rank=32"]


def _adep() -> AdapterDeployment:
    body = yaml.safe_load((EXAMPLES / "adapterdeployment-vllm-existing.yaml").read_text())
    body["metadata"].update({"namespace": "serving", "uid": "uid-1"})
    return AdapterDeployment.model_validate(body)


def _owners_deployment(args: list[str], gates: list[dict[str, str]] | None = None) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "containers": [
            {
                "name": "vllm",
                "image": "vllm/vllm-openai:v0.11.0",
                "args": args,
                "env": [{"name": "HF_HOME", "value": "/hf"}],
            }
        ]
    }
    if gates is not None:
        pod["readinessGates"] = gates
    return {
        "metadata": {"name": "vllm-llama-8b", "namespace": "serving", "generation": 1},
        "spec": {"replicas": 2, "template": {"metadata": {"labels": {"app": "vllm"}}, "spec": pod}},
    }


def _merged(live: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """The Deployment after the apply, with defaults the apiserver adds (as it returns it)."""
    merged = copy.deepcopy(live)
    merged["metadata"].setdefault("labels", {}).update(body["metadata"]["labels"])
    merged["metadata"].setdefault("annotations", {}).update(body["metadata"]["annotations"])
    template = merged["spec"]["template"]
    template["metadata"]["labels"].update(body["spec"]["template"]["metadata"]["labels"])
    ours = body["spec"]["template"]["spec"]
    engine = template["spec"]["containers"][0]
    engine["env"] = engine["env"] + ours["containers"][0]["env"]
    engine["volumeMounts"] = ours["containers"][0]["volumeMounts"]
    agent = copy.deepcopy(ours["containers"][1])
    agent["terminationMessagePath"] = "/dev/termination-log"  # an apiserver default
    agent["ports"][0]["protocol"] = "TCP"
    template["spec"]["containers"].append(agent)
    template["spec"]["volumes"] = ours["volumes"]
    template["spec"]["readinessGates"] = ours["readinessGates"]
    return merged


def test_the_apply_holds_only_the_operators_fields_and_never_the_engines_args() -> None:
    live = _owners_deployment(VLLM_ARGS, gates=[{"conditionType": "example.com/warm"}])
    body = render_target_apply(_adep(), live, SETTINGS)
    pod = body["spec"]["template"]["spec"]
    engine, agent = pod["containers"]
    # Keyed entries only: the owner's args, image and other env stay the owner's alone.
    assert engine == {
        "name": "vllm",
        "env": [{"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"}],
        "volumeMounts": [{"name": "peft-adapters", "mountPath": "/adapters"}],
    }
    assert agent["name"] == "adapter-agent" and "--engine-url=http://127.0.0.1:8000" in agent["command"]
    assert pod["readinessGates"] == [
        {"conditionType": "example.com/warm"},
        {"conditionType": "peft.dev/adapters-loaded"},
    ]
    assert [v["name"] for v in pod["volumes"]] == ["peft-adapters", "peft-agent-tmp"]
    assert body["spec"]["template"]["metadata"]["labels"] == {"peft.dev/adapterdeployment": "llama-team-adapters"}
    assert body["metadata"]["labels"] == {TARGET_LABEL: "llama-team-adapters"}
    assert set(body["spec"]) == {"template"}, "replicas, selector and strategy stay the owner's"


def test_fine_tune_job_output_secrets_and_adapter_claims_reach_the_agent() -> None:
    live = _owners_deployment(VLLM_ARGS)
    body = render_target_apply(_adep(), live, SETTINGS, adapter_claims=["team-adapters"], adapter_secrets=["ftj-s3"])
    agent = body["spec"]["template"]["spec"]["containers"][1]
    assert agent["envFrom"] == [{"prefix": "ADAPTER_FTJ_S3_", "secretRef": {"name": "ftj-s3"}}]
    assert {"name": "adapters-team-adapters", "mountPath": "/mnt/pvc/team-adapters", "readOnly": True} in agent[
        "volumeMounts"
    ]
    volumes = {v["name"]: v for v in body["spec"]["template"]["spec"]["volumes"]}
    assert volumes["adapters-team-adapters"]["persistentVolumeClaim"] == {
        "claimName": "team-adapters",
        "readOnly": True,
    }


def test_a_deployment_that_carries_the_apply_is_not_written_again() -> None:
    live = _owners_deployment(VLLM_ARGS)
    body = render_target_apply(_adep(), live, SETTINGS)
    assert not is_applied(live, body)
    applied = _merged(live, body)
    again = render_target_apply(_adep(), applied, SETTINGS)
    assert again == body, "the apply is a function of the spec, not of what was applied before"
    assert is_applied(applied, again)


def test_an_apply_that_the_owner_removed_or_the_spec_changed_is_written_again() -> None:
    live = _owners_deployment(VLLM_ARGS)
    applied = _merged(live, render_target_apply(_adep(), live, SETTINGS))
    replaced = copy.deepcopy(applied)  # `kubectl replace` / Argo CD Replace=true: the sidecar is gone
    replaced["spec"]["template"]["spec"]["containers"].pop()
    assert not is_applied(replaced, render_target_apply(_adep(), replaced, SETTINGS))
    # A new output Secret changes what the agent needs: a different digest even though nothing is missing.
    wider = render_target_apply(_adep(), applied, SETTINGS, adapter_secrets=["ftj-s3"])
    assert (
        wider["metadata"]["annotations"][TARGET_CONFIG_ANNOTATION]
        != (applied["metadata"]["annotations"][TARGET_CONFIG_ANNOTATION])
    )
    assert not is_applied(applied, wider)


def test_the_release_names_the_deployment_and_nothing_else() -> None:
    assert render_target_release(_owners_deployment(VLLM_ARGS)) == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "vllm-llama-8b", "namespace": "serving"},
    }


def test_missing_vllm_flags_are_named_exactly() -> None:
    adep = _adep()  # maxAdapters 128, maxRank 32
    assert flags_to_add(adep, {"args": VLLM_ARGS}) == []
    assert flags_to_add(adep, {"args": ["--model", "/models/llama", "--max-lora-rank", "64"]}) == [
        "--enable-lora",
        "--max-loras=16",
        "--max-cpu-loras=128",
    ]
    # vLLM reads --max_loras as --max-loras; a rank below maxRank would refuse adapters the agent accepts.
    assert flags_to_add(
        adep, {"command": ["sh", "-c", "vllm serve m --enable-lora --max_loras 4 --max-cpu-loras=8 --max-lora-rank=16"]}
    ) == ["--max-lora-rank=32"]
    # The built-in engine needs none of them.
    assert flags_to_add(adep, {"command": ["peft-runtime", "serve", "--model=/m"]}) == []


def test_engine_configured_warns_once_with_the_flags_and_clears() -> None:
    status = AdapterDeploymentStatus()
    events = engine_configured(status, ["--enable-lora"], "vllm-llama-8b", 3, NOW)
    condition = next(c for c in status.conditions if c.type == "EngineConfigured")
    assert condition.status == "False" and condition.reason == "LoRAFlagsMissing"
    assert "add --enable-lora to its args" in condition.message
    assert [(e.type, e.reason) for e in events] == [("Warning", "LoRAFlagsMissing")]
    assert engine_configured(status, ["--enable-lora"], "vllm-llama-8b", 3, NOW) == []
    assert engine_configured(status, [], "vllm-llama-8b", 4, NOW) == []
    condition = next(c for c in status.conditions if c.type == "EngineConfigured")
    assert condition.status == "True" and condition.reason == "LoRAFlagsSet"


def test_a_field_conflict_names_the_apiservers_words_and_the_fix() -> None:
    error = ApiException(status=409, reason="Conflict")
    error.body = '{"message": "Apply failed with 1 conflict: conflict with \\"argocd-controller\\": .spec.template.spec.readinessGates"}'
    live = _owners_deployment(VLLM_ARGS)
    reason, message = field_conflict(live, error)
    assert reason == "TargetFieldConflict"
    assert 'conflict with "argocd-controller": .spec.template.spec.readinessGates' in message
    assert "readinessGates must include {conditionType: peft.dev/adapters-loaded}" in message
    # A Deployment the old once-only patch equipped: its fields belong to that patch's manager.
    live["metadata"]["annotations"] = {"peft.dev/adapter-deployment": "llama-team-adapters"}
    assert "replace it with your manifest once (kubectl replace -f)" in field_conflict(live, error)[1]
