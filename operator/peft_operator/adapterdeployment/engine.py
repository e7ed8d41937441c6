"""Render the engine pods: the base-model server on the pod's loopback, the engine gate in front of it on
the Service's port, and the adapter agent sidecar sharing /adapters with the server.

With `runtime` the operator owns a Deployment and Service built here; with `targetRef` the same agent
sidecar goes into the user's Deployment (target.py)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ..api import AdapterDeployment, Scheme, parse_uri
from ..api.adapterdeployment import ApiKeys, Engine, Limits
from ..api.plan import MODEL_CREDENTIALS_PREFIX, PVC_MOUNT_ROOT
from ..naming import (
    ADAPTERS_READY_GATE,
    AGENT_CONTAINER,
    AGENT_PORT,
    ENGINE_CONTAINER,
    ENGINE_LOOPBACK_PORT,
    ENGINE_PORT,
    GATE_CONTAINER,
    adapterdeployment_labels,
    admin_token_secret_name,
    engine_name,
)
from ..pods import container_resources, container_security_context, owned_metadata, pod_spec
from ..settings import OperatorSettings

ADAPTER_ROOT = "/adapters"
MODEL_DIR = "/models/base"
VLLM_IMAGE = "vllm/vllm-openai:v0.11.0"
VLLM_MAX_LORAS_PER_BATCH = 16
TOKEN_ENV = "PEFT_ADMIN_TOKEN"
# access.apiKeys: Required: the agent writes the keyring here (from the operator), the gate reads it.
ACCESS_DIR = "/var/run/peft-access"
KEYRING_FILE = f"{ACCESS_DIR}/keyring.json"


def _token_env(adep: AdapterDeployment) -> dict[str, Any]:
    ref = adep.spec.token_secret_ref
    name, key = (ref.name, ref.key) if ref else (admin_token_secret_name(adep.metadata.name or ""), "token")
    return {"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": name, "key": key}}}


def served_model_name(uri: str) -> str:
    """What clients send as `model` for the base: org/name for hf://, else the model folder's name."""
    parsed = parse_uri(uri)
    if parsed.scheme is Scheme.HF:
        return f"{parsed.authority}/{parsed.path}"
    return parsed.path.rsplit("/", 1)[-1] if parsed.path else parsed.authority


def _model_location(adep: AdapterDeployment) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """Where the engine finds the base model, and the volume that puts it there (pvc://) if any."""
    parsed = parse_uri(adep.spec.base_model.uri)
    if parsed.scheme is Scheme.PVC:
        volume = {"name": "base-model", "persistentVolumeClaim": {"claimName": parsed.authority, "readOnly": True}}
        mount = {"name": "base-model", "mountPath": f"{PVC_MOUNT_ROOT}/{parsed.authority}", "readOnly": True}
        return f"{PVC_MOUNT_ROOT}/{parsed.authority}/{parsed.path}".rstrip("/"), [volume], [mount]
    return adep.spec.base_model.uri, [], []


def adapter_credentials_prefix(secret: str) -> str:
    """Each adapter credentials Secret reaches the agent under its own prefix, so tenants' buckets may
    use different credentials (adding a Secret changes the pod template: one rolling update)."""
    return "ADAPTER_" + re.sub(r"[^A-Z0-9]", "_", secret.upper()) + "_"


def claim_volumes(claims: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Read-only volumes for the claims that pvc:// adapters live on, mounted where the agent looks."""
    volumes, mounts = [], []
    for claim in sorted(set(claims)):
        name = f"adapters-{claim}"[:63].rstrip("-.")
        volumes.append({"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": name, "mountPath": f"{PVC_MOUNT_ROOT}/{claim}", "readOnly": True})
    return volumes, mounts


def agent_container(
    adep: AdapterDeployment, settings: OperatorSettings, engine_port: int, adapter_secrets: Sequence[str] = ()
) -> dict[str, Any]:
    spec = adep.spec
    args = [
        "peft-runtime",
        "agent",
        f"--engine-url=http://127.0.0.1:{engine_port}",
        f"--adapter-root={ADAPTER_ROOT}",
        f"--port={AGENT_PORT}",
        f"--base-model-uri={spec.base_model.uri}",
        f"--max-rank={spec.limits.max_rank}",
        f"--max-adapters={spec.limits.max_adapters}",
        f"--pvc-root={PVC_MOUNT_ROOT}",
    ]
    if spec.base_model.revision:
        args.append(f"--base-model-revision={spec.base_model.revision}")
    env = [_token_env(adep), {"name": "HOME", "value": "/tmp"}]
    # One entry per credentials Secret, however many adapters share it: the spec's, and those of the
    # FineTuneJobs whose output the adapters come from (`adapter_secrets`).
    secrets = sorted(
        {a.source.credentials_secret_ref.name for a in spec.adapters if a.source.credentials_secret_ref}
        | set(adapter_secrets)
    )
    env_from = [{"prefix": adapter_credentials_prefix(name), "secretRef": {"name": name}} for name in secrets]
    container: dict[str, Any] = {
        "name": AGENT_CONTAINER,
        "image": settings.runtime_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": args,
        "env": env,
        "ports": [{"name": "agent", "containerPort": AGENT_PORT}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": AGENT_PORT}, "periodSeconds": 5},
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "adapters", "mountPath": ADAPTER_ROOT}, {"name": "agent-tmp", "mountPath": "/tmp"}],
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}},
    }
    if env_from:
        container["envFrom"] = env_from
    return container


def vllm_lora_args(limits: Limits) -> list[str]:
    """vLLM's runtime-LoRA flags from the spec. --max-loras is how many adapters one batch may mix (vLLM
    preallocates a slot of maxRank per adapter, hence the cap of 16); --max-cpu-loras is how many it keeps in
    memory (maxResident), swapped into those slots as requests ask for them. vLLM registers any number of
    adapters beyond that and reads an evicted one from its files again on its next request."""
    return [
        "--enable-lora",
        f"--max-loras={min(limits.resident, VLLM_MAX_LORAS_PER_BATCH)}",
        f"--max-cpu-loras={limits.resident}",
        f"--max-lora-rank={limits.max_rank}",
    ]


def _engine_container(adep: AdapterDeployment, settings: OperatorSettings, model: str) -> dict[str, Any]:
    spec = adep.spec
    runtime = spec.runtime
    assert runtime is not None
    env: list[dict[str, Any]] = [
        _token_env(adep),
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": "/tmp/hf"},
    ]
    if spec.base_model.token_secret_ref is not None:
        ref = spec.base_model.token_secret_ref
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    env_from = []
    if spec.base_model.credentials_secret_ref is not None:
        env_from.append(
            {"prefix": MODEL_CREDENTIALS_PREFIX, "secretRef": {"name": spec.base_model.credentials_secret_ref.name}}
        )
    if runtime.engine is Engine.VLLM:
        image = runtime.image or VLLM_IMAGE
        model_arg = model.removeprefix("hf://")
        command = [
            "vllm",
            "serve",
            model_arg,
            "--host=127.0.0.1",
            f"--port={ENGINE_LOOPBACK_PORT}",
            *vllm_lora_args(spec.limits),
            f"--served-model-name={served_model_name(spec.base_model.uri)}",
        ]
        if spec.base_model.revision:
            command.append(f"--revision={spec.base_model.revision}")
        # vLLM's runtime LoRA endpoints exist only with this switch.
        env.append({"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"})
    else:
        image = runtime.image or settings.runtime_image
        command = [
            "peft-runtime",
            "serve",
            f"--model={model}",
            "--host=127.0.0.1",
            f"--port={ENGINE_LOOPBACK_PORT}",
            f"--max-adapters={spec.limits.max_adapters}",
            f"--max-resident={spec.limits.resident}",
            f"--max-rank={spec.limits.max_rank}",
            f"--served-model-name={served_model_name(spec.base_model.uri)}",
            f"--pvc-root={PVC_MOUNT_ROOT}",
        ]
        if spec.base_model.revision:
            command.append(f"--revision={spec.base_model.revision}")
    command += list(runtime.extra_args or [])
    container: dict[str, Any] = {
        "name": ENGINE_CONTAINER,
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": command,
        "env": env,
        # Loopback only, so no port and no probe of its own: the gate's readiness probe asks its /health.
        "resources": container_resources(runtime.resources),
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "adapters", "mountPath": ADAPTER_ROOT}, {"name": "engine-tmp", "mountPath": "/tmp"}],
    }
    if env_from:
        container["envFrom"] = env_from
    return container


def _gate_container(settings: OperatorSettings) -> dict[str, Any]:
    """The engine gate on the Service's port: clients reach the engine only through it, and it refuses the
    engine's admin routes (runtime LoRA loading and the rest), which only the agent calls, on loopback."""
    return {
        "name": GATE_CONTAINER,
        "image": settings.runtime_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": [
            "peft-runtime",
            "gate",
            f"--engine-url=http://127.0.0.1:{ENGINE_LOOPBACK_PORT}",
            f"--port={ENGINE_PORT}",
        ],
        "ports": [{"name": "http", "containerPort": ENGINE_PORT}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": ENGINE_PORT}, "periodSeconds": 5},
        "securityContext": container_security_context(),
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}},
    }


def _require_keys(gate: dict[str, Any], agent: dict[str, Any]) -> dict[str, Any]:
    """access.apiKeys: Required: the agent writes the keyring the operator sends into a volume the gate reads
    (no Secret volume: the kubelet would take up to a minute to show a revoked key; this takes one pass).
    Returns that volume."""
    agent["command"].append(f"--keyring-file={KEYRING_FILE}")
    agent["volumeMounts"].append({"name": "access", "mountPath": ACCESS_DIR})
    gate["command"].append(f"--keyring-file={KEYRING_FILE}")
    gate["volumeMounts"] = [{"name": "access", "mountPath": ACCESS_DIR, "readOnly": True}]
    return {"name": "access", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}


def render_engine_deployment(
    adep: AdapterDeployment,
    settings: OperatorSettings,
    adapter_claims: list[str] | None = None,
    adapter_secrets: Sequence[str] = (),
) -> dict[str, Any]:
    """`adapter_claims`: PVCs that pvc:// adapters live on; `adapter_secrets`: credentials Secrets of the
    resolved adapters (a FineTuneJob's output Secret). A new claim or Secret means one rolling update."""
    meta, spec = adep.metadata, adep.spec
    assert meta.name is not None and spec.runtime is not None
    labels = adapterdeployment_labels(meta.name)
    model, model_volumes, model_mounts = _model_location(adep)
    engine = _engine_container(adep, settings, model)
    engine["volumeMounts"] += model_mounts
    agent = agent_container(adep, settings, ENGINE_LOOPBACK_PORT, adapter_secrets)
    claim_vols, claim_mounts = claim_volumes(adapter_claims or [])
    agent["volumeMounts"] += claim_mounts
    volumes: list[dict[str, Any]] = [
        {"name": "adapters", "emptyDir": {}},
        {"name": "engine-tmp", "emptyDir": {}},
        {"name": "agent-tmp", "emptyDir": {}},
        *model_volumes,
        *claim_vols,
    ]
    gate = _gate_container(settings)
    if spec.access.api_keys is ApiKeys.REQUIRED:
        volumes.append(_require_keys(gate, agent))
    engine_pod = pod_spec(
        [engine, gate, agent],
        volumes,
        spec.runtime.resources,
        settings.trainer_run_as_user,
        readinessGates=[{"conditionType": ADAPTERS_READY_GATE}],
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": owned_metadata(AdapterDeployment.KIND, meta, engine_name(meta.name), labels),
        "spec": {
            "replicas": spec.runtime.replicas,
            "selector": {"matchLabels": labels},
            # A new pod takes traffic only when it holds every adapter (readiness gate), so surge first.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": labels}, "spec": engine_pod},
        },
    }


def render_engine_service(adep: AdapterDeployment) -> dict[str, Any]:
    meta = adep.metadata
    assert meta.name is not None
    labels = adapterdeployment_labels(meta.name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": owned_metadata(AdapterDeployment.KIND, meta, engine_name(meta.name), labels),
        "spec": {
            "selector": labels,
            "ports": [{"name": "http", "port": ENGINE_PORT, "targetPort": "http"}],
        },
    }


def render_admin_token_secret(adep: AdapterDeployment, token: str) -> dict[str, Any]:
    meta = adep.metadata
    assert meta.name is not None
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": owned_metadata(
            AdapterDeployment.KIND, meta, admin_token_secret_name(meta.name), adapterdeployment_labels(meta.name)
        ),
        "stringData": {"token": token},
    }


def endpoint(adep: AdapterDeployment) -> str | None:
    """The in-cluster OpenAI-compatible URL; with targetRef the user's own Service is the endpoint."""
    meta = adep.metadata
    if adep.spec.target_ref is not None:
        return None
    return f"http://{engine_name(meta.name or '')}.{meta.namespace}.svc:{ENGINE_PORT}/v1"
