"""Equip a user's engine Deployment (`targetRef`) for runtime adapter loading."""

from __future__ import annotations

from typing import Any

from ..api import AdapterDeployment
from ..naming import ADAPTERS_READY_GATE, LABEL_ADAPTERDEPLOYMENT, PATCHED_ANNOTATION
from ..settings import OperatorSettings
from .engine import ADAPTER_ROOT, agent_container, vllm_lora_args


def _with_our_gate(gates: list[dict[str, str]] | None) -> list[dict[str, str]]:
    """readinessGates has no merge key: keep the user's gates and add ours."""
    gates = list(gates or [])
    return (
        gates if {"conditionType": ADAPTERS_READY_GATE} in gates else [*gates, {"conditionType": ADAPTERS_READY_GATE}]
    )


def target_container(adep: AdapterDeployment, deployment: dict[str, Any]) -> dict[str, Any] | None:
    """The engine container of a targetRef Deployment: the one named in targetRef.container, else the first."""
    target = adep.spec.target_ref
    assert target is not None
    containers = deployment["spec"]["template"]["spec"]["containers"]
    if not target.container:
        return containers[0]  # type: ignore[no-any-return]
    return next((c for c in containers if c["name"] == target.container), None)


def render_target_patch(
    adep: AdapterDeployment, deployment: dict[str, Any], settings: OperatorSettings
) -> dict[str, Any]:
    """A strategic-merge patch that equips an existing engine Deployment for runtime adapter loading:
    the agent sidecar, the shared /adapters volume, vLLM's runtime-LoRA switch and flags, the readiness
    gate. Applied once (the annotation records it); adapter changes never touch the Deployment again."""
    target = adep.spec.target_ref
    engine = target_container(adep, deployment)
    assert target is not None and adep.metadata.name is not None
    assert engine is not None, "the reconciler checks targetRef.container first"
    args = list(engine.get("args") or [])
    wanted = vllm_lora_args(adep.spec.limits)
    flags = {a.split("=", 1)[0] for a in args + list(engine.get("command") or [])}
    args += [w for w in wanted if w.split("=", 1)[0] not in flags]
    engine_patch = {
        "name": engine["name"],
        "args": args,
        "env": [{"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"}],
        "volumeMounts": [{"name": "peft-adapters", "mountPath": ADAPTER_ROOT}],
    }
    agent = agent_container(adep, settings, target.port)
    agent["volumeMounts"] = [
        {"name": "peft-adapters", "mountPath": ADAPTER_ROOT},
        {"name": "peft-agent-tmp", "mountPath": "/tmp"},
    ]
    return {
        "metadata": {"annotations": {PATCHED_ANNOTATION: adep.metadata.name}},
        "spec": {
            "template": {
                # Our label on the pods lets the operator find them whatever the Deployment's selector is.
                "metadata": {"labels": {LABEL_ADAPTERDEPLOYMENT: adep.metadata.name}},
                "spec": {
                    "readinessGates": _with_our_gate(deployment["spec"]["template"]["spec"].get("readinessGates")),
                    "containers": [engine_patch, agent],
                    "volumes": [{"name": "peft-adapters", "emptyDir": {}}, {"name": "peft-agent-tmp", "emptyDir": {}}],
                },
            }
        },
    }
