"""The Secrets a FineTuneJob names, created as a tenant would before applying it (the operator waits for
them: a job whose Secret is missing stays Pending with SecretNotFound)."""

from __future__ import annotations

from typing import Any

from kubernetes.client import ApiClient, ApiException, CoreV1Api

S3_KEYS = {"AWS_ACCESS_KEY_ID": "test-key-id", "AWS_SECRET_ACCESS_KEY": "test-secret-key"}


def referenced_secrets(body: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Secret name -> data for every Secret the FineTuneJob body refers to."""
    spec = body["spec"]
    secrets: dict[str, dict[str, str]] = {}
    for block in (spec["baseModel"], spec["dataset"], spec["output"]):
        if "credentialsSecretRef" in block:
            secrets.setdefault(block["credentialsSecretRef"]["name"], {}).update(S3_KEYS)
    token = spec["baseModel"].get("tokenSecretRef")
    if token is not None:
        secrets.setdefault(token["name"], {})[token.get("key", "token")] = "hf_test_token"
    return secrets


def create_referenced_secrets(admin: ApiClient, namespace: str, body: dict[str, Any]) -> None:
    core = CoreV1Api(admin)
    for name, data in referenced_secrets(body).items():
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data}
        try:
            core.create_namespaced_secret(namespace, secret)
        except ApiException as error:
            if error.status != 409:
                raise
