"""Deterministic names and labels of the objects the operator creates: a restart finds them again."""

from __future__ import annotations

import hashlib

LABEL_FINETUNEJOB = "peft.dev/finetunejob"
LABEL_ADAPTERDEPLOYMENT = "peft.dev/adapterdeployment"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "peft-operator"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
CANCEL_ANNOTATION = "peft.dev/cancel"
TRAINER_CONTAINER = "trainer"


def training_job_name(finetunejob: str) -> str:
    return f"{finetunejob}-train"


def preflight_job_name(finetunejob: str) -> str:
    return f"{finetunejob}-preflight"


def plan_configmap_name(finetunejob: str) -> str:
    return f"{finetunejob}-plan"


def progress_secret_name(finetunejob: str) -> str:
    return f"{finetunejob}-progress"


def finetunejob_labels(finetunejob: str, component: str = "trainer") -> dict[str, str]:
    """`component`: trainer (the training Job, its pods, the plan) or preflight (the preflight Job and pod)."""
    return {LABEL_FINETUNEJOB: finetunejob, LABEL_COMPONENT: component, LABEL_MANAGED_BY: MANAGER}


ENGINE_CONTAINER = "engine"
AGENT_CONTAINER = "adapter-agent"
GATE_CONTAINER = "engine-gate"
ENGINE_PORT = 8000  # the Service's port: the engine gate listens here
ENGINE_LOOPBACK_PORT = 8080  # the engine itself, on the pod's loopback only (the gate and the agent reach it)
AGENT_PORT = 8001
# Pods count as ready (and get Service traffic) only once the operator set this condition on them.
ADAPTERS_READY_GATE = "peft.dev/adapters-loaded"


def engine_name(adapter_deployment: str) -> str:
    return adapter_deployment


def admin_token_secret_name(adapter_deployment: str) -> str:
    return f"{adapter_deployment}-admin-token"


def platform_key_secret_name(adapter_deployment: str) -> str:
    """The platform's API key (access.apiKeys: Required): the base model and every adapter in spec.adapters."""
    return f"{adapter_deployment}-api-key"


def adapter_key_secret_name(adapter_deployment: str, adapter: str) -> str:
    """The API key of one adapter in spec.adapters."""
    return f"{adapter_deployment}-{adapter}-api-key"


def attachment_key_secret_name(attachment: str) -> str:
    """The API key of an AdapterAttachment's adapter, in the tenant's namespace (a Secret name holds 253)."""
    name = f"{attachment}-api-key"
    return (
        name
        if len(name) <= 253
        else f"{attachment[:230]}-{hashlib.sha256(attachment.encode()).hexdigest()[:10]}-api-key"
    )


def adapterdeployment_labels(adapter_deployment: str) -> dict[str, str]:
    return {LABEL_ADAPTERDEPLOYMENT: adapter_deployment, LABEL_COMPONENT: "engine", LABEL_MANAGED_BY: MANAGER}
