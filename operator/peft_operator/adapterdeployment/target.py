"""Equip a user's engine Deployment (`targetRef`) for runtime adapter loading, next to a GitOps tool that
owns the same Deployment.

The operator server-side applies only fields it owns, as field manager `peft-operator`: the agent sidecar
(containers are keyed by name), its volumes, one env entry and one volumeMount on the engine container
(keyed lists), a pod label, the readiness gate, and a label and annotation on the Deployment. Whoever owns
the rest (Argo CD, `kubectl apply`, Helm) re-applies its manifest without touching these, so nothing fights.
The engine's args are an atomic list the owner writes: the operator never sets them, and says in the
EngineConfigured condition which of vLLM's LoRA flags the owner's manifest lacks. Each pass compares the
live Deployment with the apply it wants and applies only when they differ (a `kubectl replace` or an
Argo CD Replace sync removed the fields, or the spec changed), so an unchanged Deployment is never written."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubernetes.client import ApiClient, ApiException

from .. import kube, metrics
from ..api import AdapterDeployment, AdapterDeploymentStatus
from ..conditions import set_condition
from ..events import KubeEvent
from ..naming import ADAPTERS_READY_GATE, LABEL_ADAPTERDEPLOYMENT
from ..settings import OperatorSettings
from .engine import ADAPTER_ROOT, agent_container, claim_volumes, vllm_lora_args

log = logging.getLogger(__name__)
# On the Deployment: which AdapterDeployment equips it (a label, so orphans can be listed) ...
TARGET_LABEL = "peft.dev/target-of"
# ... and the digest of the operator's last apply (a change of spec shows as a different digest).
TARGET_CONFIG_ANNOTATION = "peft.dev/target-config"
# Left by releases that patched the Deployment once (strategic merge, field manager OpenAPI-Generator).
LEGACY_PATCH_ANNOTATION = "peft.dev/adapter-deployment"
ADAPTERS_VOLUME = "peft-adapters"
AGENT_TMP_VOLUME = "peft-agent-tmp"
ENGINE_CONFIGURED = "EngineConfigured"  # the condition: the engine's own manifest has vLLM's LoRA flags
RUNTIME_LORA_ENV = {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"}
# How list items are matched, as the apiserver merges them (containers, env and volumes by name, ...).
_MERGE_KEYS = ("name", "mountPath", "conditionType", "containerPort")


@dataclass(frozen=True)
class TargetState:
    """The targetRef engine after this pass: its replicas, a problem that blocks serving (reason, message),
    and the vLLM flags its owner's manifest should add."""

    replicas: int = 0
    problem: tuple[str, str] | None = None
    flags_to_add: tuple[str, ...] = ()


def target_container(adep: AdapterDeployment, deployment: dict[str, Any]) -> dict[str, Any] | None:
    """The engine container of a targetRef Deployment: the one named in targetRef.container, else the first."""
    target = adep.spec.target_ref
    assert target is not None
    containers = deployment["spec"]["template"]["spec"]["containers"]
    if not target.container:
        return containers[0]  # type: ignore[no-any-return]
    return next((c for c in containers if c["name"] == target.container), None)


def _with_our_gate(gates: list[dict[str, str]] | None) -> list[dict[str, str]]:
    """readinessGates is an atomic list: keep the gates already there and add ours."""
    gates = list(gates or [])
    return (
        gates if {"conditionType": ADAPTERS_READY_GATE} in gates else [*gates, {"conditionType": ADAPTERS_READY_GATE}]
    )


def _digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def render_target_apply(
    adep: AdapterDeployment,
    deployment: dict[str, Any],
    settings: OperatorSettings,
    adapter_claims: Sequence[str] = (),
    adapter_secrets: Sequence[str] = (),
) -> dict[str, Any]:
    """The server-side apply of the operator's fields on the user's Deployment. `adapter_claims` and
    `adapter_secrets` as for the operator's own engine: PVCs of pvc:// adapters, and credentials Secrets
    of the resolved adapters (a FineTuneJob's output Secret), both for the agent."""
    target, name = adep.spec.target_ref, adep.metadata.name
    engine = target_container(adep, deployment)
    assert target is not None and name is not None
    assert engine is not None, "the reconciler checks targetRef.container first"
    agent = agent_container(adep, settings, target.port, adapter_secrets)
    claim_vols, claim_mounts = claim_volumes(list(adapter_claims))
    agent["volumeMounts"] = [
        {"name": ADAPTERS_VOLUME, "mountPath": ADAPTER_ROOT},
        {"name": AGENT_TMP_VOLUME, "mountPath": "/tmp"},
        *claim_mounts,
    ]
    pod = {
        "readinessGates": _with_our_gate(deployment["spec"]["template"]["spec"].get("readinessGates")),
        "containers": [
            {
                "name": engine["name"],
                "env": [RUNTIME_LORA_ENV],
                "volumeMounts": [{"name": ADAPTERS_VOLUME, "mountPath": ADAPTER_ROOT}],
            },
            agent,
        ],
        "volumes": [{"name": ADAPTERS_VOLUME, "emptyDir": {}}, {"name": AGENT_TMP_VOLUME, "emptyDir": {}}, *claim_vols],
    }
    body: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": deployment["metadata"]["name"], "namespace": deployment["metadata"]["namespace"]},
        # Our label on the pods lets the operator find them whatever the Deployment's selector is.
        "spec": {"template": {"metadata": {"labels": {LABEL_ADAPTERDEPLOYMENT: name}}, "spec": pod}},
    }
    body["metadata"]["labels"] = {TARGET_LABEL: name}
    body["metadata"]["annotations"] = {TARGET_CONFIG_ANNOTATION: _digest(body)}
    return body


def render_target_release(deployment: dict[str, Any]) -> dict[str, Any]:
    """An apply with none of the operator's fields: the apiserver removes every field only `peft-operator`
    owned, and leaves the Deployment as its owner wrote it."""
    meta = deployment["metadata"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
    }


def _holds(live: Any, wanted: Any) -> bool:
    """Whether `live` has every field of `wanted` (the apiserver adds defaults, so a superset is a match);
    list items are matched by their merge key, as the apiserver merges them."""
    if isinstance(wanted, dict):
        return isinstance(live, dict) and all(k in live and _holds(live[k], v) for k, v in wanted.items())
    if isinstance(wanted, list) and wanted and all(isinstance(w, dict) for w in wanted):
        if not isinstance(live, list):
            return False
        for item in wanted:
            key = next((k for k in _MERGE_KEYS if k in item), None)
            candidates = [x for x in live if isinstance(x, dict) and (key is None or x.get(key) == item[key])]
            if not any(_holds(x, item) for x in candidates):
                return False
        return True
    return bool(live == wanted)


def is_applied(live: dict[str, Any], body: dict[str, Any]) -> bool:
    """The live Deployment already carries this apply: nothing to write (and no generation to bump)."""
    annotations = live["metadata"].get("annotations") or {}
    if annotations.get(TARGET_CONFIG_ANNOTATION) != body["metadata"]["annotations"][TARGET_CONFIG_ANNOTATION]:
        return False
    return _holds(live, {"metadata": {"labels": body["metadata"]["labels"]}, "spec": body["spec"]})


def _argv_tokens(engine: dict[str, Any]) -> list[str]:
    """The engine's command line as words; a shell's `-c "vllm serve ..."` is split too."""
    return [word for arg in [*(engine.get("command") or []), *(engine.get("args") or [])] for word in str(arg).split()]


def flags_to_add(adep: AdapterDeployment, engine: dict[str, Any]) -> list[str]:
    """vLLM's runtime-LoRA flags the engine's command line lacks (or sets a rank below limits.maxRank);
    none for the built-in engine (`peft-runtime serve`), which needs no flags."""
    words = _argv_tokens(engine)
    if any(a == "peft-runtime" and b == "serve" for a, b in itertools.pairwise(words)):
        return []
    given: dict[str, str] = {}
    for i, word in enumerate(words):
        if word.startswith("--"):
            flag, has_value, value = word.partition("=")
            following = words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("-") else ""
            given[flag.replace("_", "-")] = value if has_value else following
    missing = [w for w in vllm_lora_args(adep.spec.limits) if w.partition("=")[0] not in given]
    rank = given.get("--max-lora-rank", "")
    if rank.isdigit() and int(rank) < adep.spec.limits.max_rank:
        missing.append(f"--max-lora-rank={adep.spec.limits.max_rank}")
    return missing


def field_conflict(live: dict[str, Any], error: ApiException) -> tuple[str, str]:
    try:
        words = json.loads(error.body or "{}").get("message") or str(error.reason)
    except ValueError:
        words = str(error.reason)
    fix = (
        "Remove them from the Deployment's manifest, or give them the operator's values (readinessGates must "
        f"include {{conditionType: {ADAPTERS_READY_GATE}}})."
    )
    if LEGACY_PATCH_ANNOTATION in (live["metadata"].get("annotations") or {}):
        fix = "An earlier operator release patched this Deployment: replace it with your manifest once (kubectl replace -f)."
    name = live["metadata"]["name"]
    return (
        "TargetFieldConflict",
        f"Deployment {name}: another field manager owns fields the operator sets ({words}). {fix}",
    )


def ensure_target(
    client: ApiClient,
    adep: AdapterDeployment,
    settings: OperatorSettings,
    adapter_claims: Sequence[str] = (),
    adapter_secrets: Sequence[str] = (),
) -> TargetState:
    """Apply the operator's fields to the targetRef Deployment unless it already carries them."""
    meta, target = adep.metadata, adep.spec.target_ref
    assert meta.namespace is not None and meta.name is not None and target is not None
    live = kube.read_deployment(client, meta.namespace, target.name)
    if live is None:
        return TargetState(
            problem=("TargetNotFound", f"Deployment {target.name} (targetRef) does not exist in this namespace.")
        )
    engine = target_container(adep, live)
    if engine is None:
        names = ", ".join(c["name"] for c in live["spec"]["template"]["spec"]["containers"])
        message = f"Deployment {target.name} has no container named {target.container} (it has: {names}); fix targetRef.container."
        return TargetState(problem=("TargetContainerNotFound", message))
    holder = (live["metadata"].get("labels") or {}).get(TARGET_LABEL)
    if holder not in (None, meta.name):
        message = f"Deployment {target.name} already serves the adapters of AdapterDeployment {holder}; one engine Deployment serves one AdapterDeployment: add these adapters to {holder}, or point targetRef at another Deployment."
        return TargetState(problem=("TargetTaken", message))
    body = render_target_apply(adep, live, settings, adapter_claims, adapter_secrets)
    if not is_applied(live, body):
        try:
            kube.server_side_apply(client, body, field_manager=kube.FIELD_MANAGER, force=False)
        except ApiException as error:
            if error.status != 409:
                raise
            return TargetState(problem=field_conflict(live, error))
        metrics.TARGET_APPLIES.labels(namespace=meta.namespace, name=meta.name).inc()
        log.info("Applied the adapter agent to Deployment %s/%s", meta.namespace, target.name)
    return TargetState(int(live["spec"].get("replicas", 1)), flags_to_add=tuple(flags_to_add(adep, engine)))


def release_orphans(client: ApiClient, namespaces: Sequence[str], adapterdeployments: Sequence[dict[str, Any]]) -> None:
    """Remove the operator's fields from Deployments whose AdapterDeployment is gone or targets another
    Deployment now (level-triggered: a deletion while the operator was down is caught on its next pass)."""
    for live in kube.list_deployments(client, namespaces, TARGET_LABEL):
        meta = live["metadata"]
        owner = meta["labels"][TARGET_LABEL]
        if _still_targeted(client, meta["namespace"], owner, meta["name"], adapterdeployments):
            continue
        kube.server_side_apply(client, render_target_release(live), field_manager=kube.FIELD_MANAGER, force=False)
        metrics.TARGET_RELEASES.labels(namespace=meta["namespace"], name=owner).inc()
        log.info(
            "Released Deployment %s/%s (AdapterDeployment %s no longer targets it)",
            meta["namespace"],
            meta["name"],
            owner,
        )


def _targets(body: dict[str, Any] | None, deployment: str) -> bool:
    if body is None or body["metadata"].get("deletionTimestamp"):
        return False
    return bool(((body.get("spec") or {}).get("targetRef") or {}).get("name") == deployment)


def _still_targeted(
    client: ApiClient, namespace: str, owner: str, deployment: str, listed: Sequence[dict[str, Any]]
) -> bool:
    """`listed` is from before this sweep: an AdapterDeployment created since is read again before release."""
    known = (b for b in listed if b["metadata"]["namespace"] == namespace and b["metadata"]["name"] == owner)
    if any(_targets(b, deployment) for b in known):
        return True
    return _targets(kube.get_custom(client, AdapterDeployment.PLURAL, namespace, owner), deployment)


def engine_configured(
    status: AdapterDeploymentStatus, flags: Sequence[str], target: str, generation: int | None, now: datetime
) -> list[KubeEvent]:
    """Set EngineConfigured on `status`: False with the exact flags while the engine's manifest lacks any,
    and a Warning Event when that news is new."""
    before = next((c for c in status.conditions if c.type == ENGINE_CONFIGURED), None)
    if flags:
        reason = "LoRAFlagsMissing"
        message = (
            f"Deployment {target}'s engine lacks vLLM's runtime-LoRA flags: add {' '.join(flags)} to its args in "
            "your manifest (the operator never changes args, which the Deployment's owner applies)."
        )
    else:
        reason, message = "LoRAFlagsSet", ""
    status.conditions = set_condition(status.conditions, ENGINE_CONFIGURED, not flags, reason, message, generation, now)
    repeated = before is not None and before.reason == reason and before.message == message
    return [] if not flags or repeated else [KubeEvent("Warning", reason, message)]
