"""Integration: the hand-off from a FineTuneJob to what serves it takes nothing over and waits for what is
missing. `spec.deploy` never replaces an AdapterDeployment entry it does not own (only its own, or the
predecessor's it names in `deploy.replaces`); a Secret the job names is checked before any child exists,
and the job starts by itself once the Secret appears."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient, BatchV1Api, CoreV1Api, CustomObjectsApi

from peft_operator.api.events import CompletedEvent
from peft_operator.api.finetunejob import AdapterRecord, Progress
from tests.support import kubelet
from tests.support.controlplane import REPO_ROOT
from tests.support.kubelet import wait_for
from tests.support.operator_process import OperatorProcess

pytestmark = pytest.mark.integration
GROUP, VERSION = "peft.dev", "v1alpha1"
BASE = "hf://HuggingFaceTB/SmolLM2-135M-Instruct"


def _job(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    body = yaml.safe_load((REPO_ROOT / "examples" / "finetunejob-lora.yaml").read_text())
    body["metadata"] = {"name": name, "namespace": namespace}
    body["spec"].update(spec)
    return body


def _create(admin: ApiClient, body: dict[str, Any]) -> None:
    plural = "finetunejobs" if body["kind"] == "FineTuneJob" else "adapterdeployments"
    CustomObjectsApi(admin).create_namespaced_custom_object(GROUP, VERSION, body["metadata"]["namespace"], plural, body)


def _get(admin: ApiClient, namespace: str, name: str, plural: str = "finetunejobs") -> dict[str, Any]:
    return CustomObjectsApi(admin).get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)  # type: ignore[no-any-return]


def _condition(admin: ApiClient, namespace: str, name: str, type_: str) -> dict[str, Any] | None:
    conditions = (_get(admin, namespace, name).get("status") or {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == type_), None)


def _wait_reason(admin: ApiClient, namespace: str, name: str, type_: str, reason: str) -> dict[str, Any]:
    return wait_for(
        f"{name}: {type_} with reason {reason}",
        lambda: (c := _condition(admin, namespace, name, type_)) is not None and c["reason"] == reason and c,
        timeout=90,
    )


def _warnings(admin: ApiClient, namespace: str, name: str) -> dict[str, str]:
    events = CoreV1Api(admin).list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    return {e.reason: e.message for e in events if e.type == "Warning"}


def _shared(namespace: str, adapters: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AdapterDeployment",
        "metadata": {"name": "shared", "namespace": namespace},
        "spec": {"baseModel": {"uri": BASE}, "runtime": {"replicas": 0}, "adapters": adapters},
    }


def _entries(admin: ApiClient, namespace: str) -> dict[str, dict[str, Any]]:
    return {a["name"]: a["source"] for a in _get(admin, namespace, "shared", "adapterdeployments")["spec"]["adapters"]}


def _train(admin: ApiClient, namespace: str, name: str, adapter: str | None = None, **deploy: str) -> None:
    """Create a job that deploys as `adapter` into `shared`, and finish its trainer pod successfully."""
    _create(admin, _job(namespace, name, deploy={"adapterDeployment": "shared", "adapterName": adapter, **deploy}))
    pod = wait_for(
        f"the trainer pod of {name}", lambda: kubelet.pods_of(admin, namespace, f"peft.dev/finetunejob={name}")
    )[0]
    record = AdapterRecord(
        uri=f"pvc://team-adapters/{name}", sha256="c" * 64, size_bytes=1, base_model=BASE, method="lora", rank=8
    )
    final = CompletedEvent(adapter=record, progress=Progress(step=1, total_steps=1))
    kubelet.set_terminated(admin, pod, 0, "Completed", final.model_dump_json(by_alias=True))


def test_deploy_never_replaces_an_entry_another_source_holds(
    operator: OperatorProcess, admin: ApiClient, namespace: str
) -> None:
    users_own = {"name": "tenant-a", "source": {"fineTuneJobRef": {"name": "tenant-a-v1"}}}
    by_uri = {"name": "legal", "source": {"uri": "s3://tenant-b-adapters/legal/v3", "sha256": "d" * 64}}
    _create(admin, _shared(namespace, [users_own, by_uri]))
    _train(admin, namespace, "intruder-v1", "tenant-a")  # a typo or a clash, not a new version
    _train(admin, namespace, "legal-v4", "legal")  # the entry is a hand-written URI
    taken = _wait_reason(admin, namespace, "intruder-v1", "Deployed", "AdapterNameTaken")
    assert taken["status"] == "False" and "from FineTuneJob tenant-a-v1" in taken["message"]
    by_uri_taken = _wait_reason(admin, namespace, "legal-v4", "Deployed", "AdapterNameTaken")
    assert "s3://tenant-b-adapters/legal/v3" in by_uri_taken["message"]
    assert "AdapterNameTaken" in wait_for("a Warning on the job", lambda: _warnings(admin, namespace, "intruder-v1"))
    on_deployment = wait_for(
        "a Warning on the AdapterDeployment", lambda: _warnings(admin, namespace, "shared").get("AdapterNameTaken")
    )
    assert "FineTuneJob intruder-v1" in on_deployment or "FineTuneJob legal-v4" in on_deployment
    assert _entries(admin, namespace) == {"tenant-a": users_own["source"], "legal": by_uri["source"]}


def test_only_the_entrys_job_or_its_named_successor_replaces_it(
    operator: OperatorProcess, admin: ApiClient, namespace: str
) -> None:
    _create(admin, _shared(namespace, []))
    _train(admin, namespace, "tenant-a-v1", "tenant-a")
    _wait_reason(admin, namespace, "tenant-a-v1", "Deployed", "AdapterAdded")
    _train(admin, namespace, "tenant-a-v2", "tenant-a", replaces="tenant-a-v1")
    _wait_reason(admin, namespace, "tenant-a-v2", "Deployed", "AdapterAdded")
    assert _entries(admin, namespace) == {"tenant-a": {"fineTuneJobRef": {"name": "tenant-a-v2"}}}
    # v1 no longer owns the entry: a third job naming v1 as its predecessor cannot take it back.
    _train(admin, namespace, "tenant-a-v1b", "tenant-a", replaces="tenant-a-v1")
    _wait_reason(admin, namespace, "tenant-a-v1b", "Deployed", "AdapterNameTaken")
    assert _entries(admin, namespace) == {"tenant-a": {"fineTuneJobRef": {"name": "tenant-a-v2"}}}


def _children(admin: ApiClient, namespace: str, name: str) -> list[str]:
    selector = f"peft.dev/finetunejob={name}"
    core = CoreV1Api(admin)
    return [
        *(
            f"ConfigMap {c.metadata.name}"
            for c in core.list_namespaced_config_map(namespace, label_selector=selector).items
        ),
        *(f"Secret {s.metadata.name}" for s in core.list_namespaced_secret(namespace, label_selector=selector).items),
        *(f"Job {j.metadata.name}" for j in BatchV1Api(admin).list_namespaced_job(namespace).items),
    ]


def test_a_missing_secret_is_a_pending_reason_that_clears_when_it_appears(
    operator: OperatorProcess, admin: ApiClient, namespace: str
) -> None:
    body = _job(namespace, "needs-s3")
    body["spec"]["dataset"]["credentialsSecretRef"] = {"name": "tenant-s3"}
    _create(admin, body)
    waiting = _wait_reason(admin, namespace, "needs-s3", "Running", "SecretNotFound")
    assert waiting["message"].startswith("spec.dataset.credentialsSecretRef: Secret tenant-s3 does not exist")
    assert _get(admin, namespace, "needs-s3")["status"]["phase"] == "Pending"
    assert "SecretNotFound" in wait_for("a Warning Event", lambda: _warnings(admin, namespace, "needs-s3"))
    assert _children(admin, namespace, "needs-s3") == [], "nothing is created before the Secret exists"

    secret = {"metadata": {"name": "tenant-s3"}, "stringData": {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}}
    CoreV1Api(admin).create_namespaced_secret(namespace, secret)
    wait_for(
        "the training Job once the Secret exists",
        lambda: "Job needs-s3-train" in _children(admin, namespace, "needs-s3"),
        timeout=90,
    )
    wait_for(
        "the reason to clear",
        lambda: (
            (c := _condition(admin, namespace, "needs-s3", "Running")) is not None and c["reason"] != "SecretNotFound"
        ),
    )


def test_a_missing_key_names_the_key_and_the_keys_there_are(
    operator: OperatorProcess, admin: ApiClient, namespace: str
) -> None:
    CoreV1Api(admin).create_namespaced_secret(namespace, {"metadata": {"name": "hub"}, "stringData": {"HF_TOKEN": "x"}})
    body = _job(namespace, "needs-token")
    body["spec"]["baseModel"]["tokenSecretRef"] = {"name": "hub", "key": "token"}
    _create(admin, body)
    waiting = _wait_reason(admin, namespace, "needs-token", "Running", "SecretKeyNotFound")
    assert "Secret hub has no key token (it has: HF_TOKEN)" in waiting["message"]
    assert _children(admin, namespace, "needs-token") == []
