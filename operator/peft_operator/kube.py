"""Idempotent actions against the Kubernetes API (synchronous client; Kopf runs sync handlers in threads).

`ensure_*` creates an object or, on 409, reads the existing one: running twice changes nothing."""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import kubernetes
from kubernetes.client import ApiClient, ApiException, BatchV1Api, CoreV1Api, CustomObjectsApi

from .api import GROUP, VERSION, AdapterDeployment, FineTuneJob

log = logging.getLogger(__name__)
FIELD_MANAGER = "peft-operator"


class OwnershipConflictError(RuntimeError):
    """An object with the name the operator needs exists but belongs to someone else."""


class ChildNotCreatedError(RuntimeError):
    """A child object the operator needs cannot be made: `reason` (CamelCase) and a sentence for the status."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# Refusals that repeating the same request cannot fix; 409, 429 and 5xx heal by themselves.
_FINAL_STATUSES = frozenset({400, 403, 404, 422})


def refusal_message(error: ApiException) -> str | None:
    """The apiserver's own sentence for a final refusal (e.g. a 422 naming the invalid field), else None."""
    if error.status not in _FINAL_STATUSES:
        return None
    try:
        message = json.loads(error.body or "{}").get("message")
    except ValueError:
        message = None
    return str(message or f"{error.status} {error.reason}")


@contextmanager
def creating_children() -> Iterator[None]:
    """Around creating children: a name someone else holds, or a final refusal, becomes ChildNotCreatedError
    (which the reconcilers put into a condition and a Warning Event instead of retrying in silence)."""
    try:
        yield
    except OwnershipConflictError as error:
        raise ChildNotCreatedError("NameTaken", str(error)) from error
    except ApiException as error:
        message = refusal_message(error)
        if message is None:
            raise
        raise ChildNotCreatedError("CreateRejected", f"The API server refused a child object: {message}") from error


def load_api_client() -> ApiClient:
    """In-cluster credentials when running in a pod, else $KUBECONFIG / ~/.kube/config."""
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        kubernetes.config.load_incluster_config()
        return ApiClient()
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(client_configuration=configuration)
    return ApiClient(configuration)


def as_dict(client: ApiClient, obj: Any) -> dict[str, Any]:
    return client.sanitize_for_serialization(obj)  # type: ignore[no-any-return]


def _check_owner(existing: dict[str, Any], owner_uid: str | None) -> dict[str, Any]:
    owners = {ref.get("uid") for ref in existing["metadata"].get("ownerReferences") or []}
    if owner_uid is not None and owner_uid not in owners:
        meta = existing["metadata"]
        raise OwnershipConflictError(
            f"{existing.get('kind', 'object')} {meta['namespace']}/{meta['name']} already exists and is not "
            "owned by this resource; delete or rename it"
        )
    return existing


def _owner_uid(body: dict[str, Any]) -> str | None:
    refs = body["metadata"].get("ownerReferences") or []
    return refs[0]["uid"] if refs else None


def ensure_namespaced(client: ApiClient, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Create a ConfigMap, Secret, Job, Service or Deployment unless it exists; (object, created)."""
    kind, namespace, name = body["kind"], body["metadata"]["namespace"], body["metadata"]["name"]
    create, read = _verbs(client, kind)
    try:
        created = as_dict(client, create(namespace, body))
        log.info("Created %s %s/%s", kind, namespace, name)
        return created, True
    except ApiException as error:
        if error.status != 409:
            raise
    existing = as_dict(client, read(name, namespace))
    existing.setdefault("kind", kind)
    return _check_owner(existing, _owner_uid(body)), False


def _verbs(client: ApiClient, kind: str) -> tuple[Any, Any]:
    core, batch, apps = CoreV1Api(client), BatchV1Api(client), kubernetes.client.AppsV1Api(client)
    return {
        "ConfigMap": (core.create_namespaced_config_map, core.read_namespaced_config_map),
        "Secret": (core.create_namespaced_secret, core.read_namespaced_secret),
        "Service": (core.create_namespaced_service, core.read_namespaced_service),
        "Job": (batch.create_namespaced_job, batch.read_namespaced_job),
        "Deployment": (apps.create_namespaced_deployment, apps.read_namespaced_deployment),
    }[kind]


def delete_job(client: ApiClient, namespace: str, name: str) -> None:
    try:
        BatchV1Api(client).delete_namespaced_job(name, namespace, propagation_policy="Background")
        log.info("Deleted Job %s/%s", namespace, name)
    except ApiException as error:
        if error.status != 404:
            raise


def stop_job_retries(client: ApiClient, namespace: str, name: str) -> None:
    """backoffLimit 0: the Job controller fails the Job at its first counted failure and starts no other pod;
    the finished pods (and their logs) stay."""
    try:
        BatchV1Api(client).patch_namespaced_job(name, namespace, {"spec": {"backoffLimit": 0}})
        log.info("Stopped the retries of Job %s/%s", namespace, name)
    except ApiException as error:
        if error.status != 404:
            raise


def list_pods(client: ApiClient, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
    label_selector = ",".join(f"{k}={v}" for k, v in selector.items())
    pods = CoreV1Api(client).list_namespaced_pod(namespace, label_selector=label_selector)
    return [as_dict(client, p) for p in pods.items]


def get_custom(client: ApiClient, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        obj = CustomObjectsApi(client).get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
        return obj  # type: ignore[no-any-return]
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def patch_status(
    client: ApiClient, plural: str, namespace: str, name: str, status: dict[str, Any], resource_version: str | None
) -> dict[str, Any]:
    """Merge-patch .status; with `resource_version` the write fails (409) if the object moved on meanwhile."""
    body: dict[str, Any] = {"status": status}
    if resource_version is not None:
        body["metadata"] = {"resourceVersion": resource_version}
    api = CustomObjectsApi(client)
    return api.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, plural, name, body)  # type: ignore[no-any-return]


def server_side_apply(
    client: ApiClient, body: dict[str, Any], field_manager: str, force: bool = True
) -> dict[str, Any]:
    """Server-side apply with our own field manager: fields other managers own are left alone. Without
    `force`, a field another manager set to a different value is a 409 conflict instead of a takeover."""
    meta, kind = body["metadata"], body["kind"]
    apply = {"field_manager": field_manager, "force": force, "_content_type": "application/apply-patch+yaml"}
    if kind == "Deployment":
        result = kubernetes.client.AppsV1Api(client).patch_namespaced_deployment(
            meta["name"], meta["namespace"], body, **apply
        )
        return as_dict(client, result)
    plural = {model.KIND: model.PLURAL for model in (AdapterDeployment, FineTuneJob)}[kind]
    return CustomObjectsApi(client).patch_namespaced_custom_object(  # type: ignore[no-any-return]
        GROUP, VERSION, meta["namespace"], plural, meta["name"], body, **apply
    )


def patch_pod_condition(client: ApiClient, namespace: str, name: str, condition: dict[str, Any]) -> None:
    """Set one pod condition (a readiness gate), merged by type as the kubelet merges its own."""
    CoreV1Api(client).patch_namespaced_pod_status(
        name,
        namespace,
        {"status": {"conditions": [condition]}},
        _content_type="application/strategic-merge-patch+json",
    )


def _encoded_secret_data(client: ApiClient, namespace: str, name: str) -> dict[str, str] | None:
    """A Secret's data (base64 values), or None when it does not exist."""
    try:
        secret = CoreV1Api(client).read_namespaced_secret(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return dict(secret.data or {})


def secret_keys(client: ApiClient, namespace: str, name: str) -> frozenset[str] | None:
    """The keys a Secret holds, or None when it does not exist."""
    data = _encoded_secret_data(client, namespace, name)
    return None if data is None else frozenset(data)


def read_secret_key(client: ApiClient, namespace: str, name: str, key: str) -> str | None:
    value = (_encoded_secret_data(client, namespace, name) or {}).get(key)
    return base64.b64decode(value).decode() if value else None


def read_secret_data(client: ApiClient, namespace: str, name: str) -> dict[str, str] | None:
    """Every key of a Secret, decoded; None when it does not exist. The values are credentials: never log them."""
    data = _encoded_secret_data(client, namespace, name)
    return None if data is None else {key: base64.b64decode(value).decode() for key, value in data.items()}


def claim_access_modes(client: ApiClient, namespace: str, name: str) -> list[str] | None:
    """A PersistentVolumeClaim's access modes, or None when it does not exist."""
    try:
        claim = CoreV1Api(client).read_namespaced_persistent_volume_claim(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return list(claim.spec.access_modes or [])


def read_deployment(client: ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return as_dict(client, kubernetes.client.AppsV1Api(client).read_namespaced_deployment(name, namespace))
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def list_deployments(client: ApiClient, namespaces: Sequence[str], label: str) -> list[dict[str, Any]]:
    """Deployments that carry `label` (any value), in `namespaces` or, when empty, in every namespace."""
    apps = kubernetes.client.AppsV1Api(client)
    if not namespaces:
        return [as_dict(client, d) for d in apps.list_deployment_for_all_namespaces(label_selector=label).items]
    return [
        as_dict(client, d) for ns in namespaces for d in apps.list_namespaced_deployment(ns, label_selector=label).items
    ]
