"""API keys for an AdapterDeployment with `access.apiKeys: Required`: issue one key per adapter, each in a
Secret next to whoever owns the adapter, and build the keyring (sha256 of each key -> the models it grants)
that the agents hand to the engine gates.

- an accepted AdapterAttachment's key lives in the TENANT's namespace, owned by the attachment (deleting it
  deletes the key, and the next keyring leaves it out); it grants `<namespace>/<name>` only;
- each adapter of spec.adapters gets a key in the deployment's namespace, owned by the deployment;
- the platform key there grants the base model and every adapter of spec.adapters.

Only digests leave a tenant's namespace: the keyring travels to the agents in memory and is written to a
volume inside the engine pod, never to an API object. Deleting a key's Secret rotates it: the next pass
issues a new one and the old one stops working."""

from __future__ import annotations

import base64
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes.client import ApiClient, ApiException, CoreV1Api

from .. import kube
from ..adapterattachment.admission import AttachmentKey
from ..api import AdapterAttachment, AdapterDeployment
from ..api.adapterattachment import served_name
from ..api.agent import KeyGrant, Keyring, key_digest
from ..api.base import ObjectMeta
from ..naming import (
    LABEL_COMPONENT,
    LABEL_MANAGED_BY,
    MANAGER,
    adapter_key_secret_name,
    attachment_key_secret_name,
    platform_key_secret_name,
)
from ..pods import owned_metadata

log = logging.getLogger(__name__)
API_KEY = "apiKey"  # the Secret's key holding the API key


def key_secret(owner_kind: str, owner: ObjectMeta, name: str, key: str) -> dict[str, Any]:
    metadata = owned_metadata(owner_kind, owner, name, {LABEL_COMPONENT: "api-key", LABEL_MANAGED_BY: MANAGER})
    # Nothing waits for a key Secret in a foreground deletion, and blockOwnerDeletion would need `update` on
    # the owner's finalizers (AdapterAttachments too) where OwnerReferencesPermissionEnforcement runs.
    metadata["ownerReferences"][0]["blockOwnerDeletion"] = False
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": metadata, "stringData": {API_KEY: key}}


def _read_secret(client: ApiClient, namespace: str, name: str) -> Any | None:
    try:
        return CoreV1Api(client).read_namespaced_secret(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def issued_key(client: ApiClient, owner_kind: str, owner: ObjectMeta, name: str) -> str | None:
    """The key in Secret `name` of the owner's namespace, issued now if the Secret does not exist. None (no
    key: nothing granted) when a Secret of that name is not the owner's or holds no apiKey, or the apiserver
    refuses to create it: one namespace's trouble must not stop the deployment's pass for everyone else."""
    namespace = owner.namespace or ""
    secret = _read_secret(client, namespace, name)
    if secret is None:
        try:
            kube.ensure_namespaced(client, key_secret(owner_kind, owner, name, secrets.token_urlsafe(32)))
        except (ApiException, kube.OwnershipConflictError) as error:
            if isinstance(error, ApiException) and kube.refusal_message(error) is None:
                raise  # a 409, 429 or 5xx: the next pass retries
            log.warning("Cannot issue the API key Secret %s/%s: %s", namespace, name, error)
            return None
        secret = _read_secret(client, namespace, name)
    owners = {ref.uid for ref in (secret.metadata.owner_references or [])} if secret is not None else set()
    value = ((secret.data or {}).get(API_KEY) if secret is not None else None) or ""
    if owner.uid not in owners or not value:
        log.warning(
            "Secret %s/%s is not %s %s's API key (another owner, or no %s): that key grants nothing; delete the "
            "Secret and the operator issues a new one",
            namespace,
            name,
            owner_kind,
            owner.name,
            API_KEY,
        )
        return None
    return base64.b64decode(value).decode()


@dataclass(frozen=True)
class IssuedKeys:
    keyring: Keyring
    attachment_secrets: dict[AttachmentKey, str]  # the Secret holding each attachment's (valid) key


def build_keyring(
    client: ApiClient, deployment: AdapterDeployment, accepted: Sequence[AdapterAttachment], base_model: str
) -> IssuedKeys:
    """Issue the keys that do not exist yet and return every key's grant. `accepted`: the attachments the
    deployment accepted (a refused one's key, if it has one, grants nothing until it is accepted again)."""
    meta = deployment.metadata
    assert meta.name is not None
    own = [a.name for a in deployment.spec.adapters]
    wanted: list[tuple[str, ObjectMeta, str, list[str]]] = [
        (AdapterDeployment.KIND, meta, platform_key_secret_name(meta.name), [base_model, *own]),
        *((AdapterDeployment.KIND, meta, adapter_key_secret_name(meta.name, a), [a]) for a in own),
        *(
            (
                AdapterAttachment.KIND,
                a.metadata,
                attachment_key_secret_name(a.metadata.name or ""),
                [served_name(a.metadata.namespace or "", a.spec.name)],
            )
            for a in accepted
        ),
    ]
    grants, attachment_secrets = [], {}
    for kind, owner, secret, models in wanted:
        key = issued_key(client, kind, owner, secret)
        if key is None:
            continue
        grants.append(KeyGrant(sha256=key_digest(key), models=models))
        if kind == AdapterAttachment.KIND:
            attachment_secrets[(owner.namespace or "", owner.name or "")] = secret
    return IssuedKeys(Keyring(keys=grants), attachment_secrets)
