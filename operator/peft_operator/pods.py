"""What every object and pod the operator creates has in common, built in one place for both controllers:
metadata owned by the custom resource (garbage-collected with it, no finalizer), container resources,
scheduling, and pod security (non-root, read-only root, no capabilities, no API token)."""

from __future__ import annotations

from typing import Any

from .api import API_VERSION
from .api.base import ObjectMeta
from .api.finetunejob import ComputeResources

# PyTorch data loaders, NCCL and engines need a /dev/shm larger than the container default on GPU pods.
SHM_VOLUME = {"name": "dshm", "emptyDir": {"medium": "Memory"}}
SHM_MOUNT = {"name": "dshm", "mountPath": "/dev/shm"}


def owner_reference(kind: str, metadata: ObjectMeta) -> dict[str, Any]:
    if metadata.name is None or metadata.uid is None:
        raise ValueError(f"{kind} has no name or uid yet; it must be read from the API server first")
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "name": metadata.name,
        "uid": metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def owned_metadata(kind: str, owner: ObjectMeta, name: str, labels: dict[str, str]) -> dict[str, Any]:
    """Metadata of a child object: in the owner's namespace, labelled, controlled by the owner."""
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(kind, owner)],
    }


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def container_resources(resources: ComputeResources) -> dict[str, Any]:
    """GPUs as the extended resource; CPU and memory as both request and limit (a predictable pod)."""
    limits: dict[str, Any] = {}
    if resources.gpus:
        limits[resources.gpu_resource_name] = str(resources.gpus)
    if resources.cpu:
        limits["cpu"] = resources.cpu
    if resources.memory:
        limits["memory"] = resources.memory
    requests = {k: v for k, v in limits.items() if k in ("cpu", "memory")}
    return {"limits": limits, "requests": requests} if limits else {}


def pod_spec(
    containers: list[dict[str, Any]],
    volumes: list[dict[str, Any]],
    resources: ComputeResources,
    run_as_user: int,
    **fields: Any,
) -> dict[str, Any]:
    """A pod spec with the operator's security and the user's scheduling. The first container is the one
    that uses the GPUs: it gets the shared-memory mount on GPU pods. `fields` adds kind-specific ones
    (restartPolicy, readinessGates, ...)."""
    if resources.gpus:
        gpu_container = {**containers[0], "volumeMounts": [*containers[0]["volumeMounts"], dict(SHM_MOUNT)]}
        containers = [gpu_container, *containers[1:]]
        volumes = [*volumes, dict(SHM_VOLUME)]
    spec: dict[str, Any] = {
        **fields,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": run_as_user,
            "runAsGroup": run_as_user,
            "fsGroup": run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": containers,
        "volumes": volumes,
    }
    if resources.node_selector:
        spec["nodeSelector"] = dict(resources.node_selector)
    if resources.tolerations:
        spec["tolerations"] = [t.to_wire() for t in resources.tolerations]
    if resources.priority_class_name:
        spec["priorityClassName"] = resources.priority_class_name
    return spec
