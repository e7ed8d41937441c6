"""Integration: what a new user applies first. The smallest objects the README shows are accepted by the
real apiserver, which fills in every documented default (an omitted `limits` used to break a CEL rule);
AdapterDeployment names that cannot name its Service, Deployment and pod labels are refused at apply time."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient, ApiException, CustomObjectsApi

from tests.support.controlplane import REPO_ROOT

pytestmark = pytest.mark.integration
GROUP, VERSION = "peft.dev", "v1alpha1"
PLURALS = {"FineTuneJob": "finetunejobs", "AdapterDeployment": "adapterdeployments"}


def readme_smallest_objects() -> dict[str, dict[str, Any]]:
    """Kind -> object, from the yaml blocks under the README's 'The smallest valid objects' heading."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("### The smallest valid objects", 1)[1].split("\n### ", 1)[0]
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", section, re.DOTALL)]
    return {b["kind"]: b for b in blocks}


def _create(admin: ApiClient, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    return CustomObjectsApi(admin).create_namespaced_custom_object(  # type: ignore[no-any-return]
        GROUP, VERSION, namespace, PLURALS[body["kind"]], body
    )


def _adapterdeployment(name: str, **spec: Any) -> dict[str, Any]:
    body = readme_smallest_objects()["AdapterDeployment"]
    body["metadata"]["name"] = name
    body["spec"].update(spec)
    return body


def test_the_readmes_smallest_objects_are_accepted_with_every_default_filled_in(
    crds_installed: list[str], admin: ApiClient, namespace: str
) -> None:
    objects = readme_smallest_objects()
    assert set(objects) == {"FineTuneJob", "AdapterDeployment"}
    job = _create(admin, namespace, objects["FineTuneJob"])["spec"]
    assert job["training"]["learningRate"] == "2e-4" and job["resources"]["gpus"] == 1
    assert job["runPolicy"] == {"maxRuntime": "24h", "backoffLimit": 3}
    adep = _create(admin, namespace, objects["AdapterDeployment"])["spec"]
    assert adep["limits"] == {"maxAdapters": 32, "maxRank": 64}
    assert adep["adapters"] == [] and adep["runtime"]["replicas"] == 1
    # The first adapter, added later without ever writing `limits`:
    entry = {"name": "tenant-a", "source": {"fineTuneJobRef": {"name": "minimal-v1"}}}
    patched = CustomObjectsApi(admin).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "adapterdeployments", "minimal", {"spec": {"adapters": [entry]}}
    )
    assert [a["name"] for a in patched["spec"]["adapters"]] == ["tenant-a"]


def test_an_empty_adapter_list_without_limits_is_accepted(
    crds_installed: list[str], admin: ApiClient, namespace: str
) -> None:
    created = _create(admin, namespace, _adapterdeployment("empty", adapters=[]))
    assert created["spec"]["limits"]["maxAdapters"] == 32


@pytest.mark.parametrize(
    "name",
    ["tenant.shared", "t" * 64, "1-shared"],
    ids=["dots", "64-characters", "digit-first"],
)
def test_adapterdeployment_names_that_cannot_name_its_service_are_refused(
    crds_installed: list[str], admin: ApiClient, namespace: str, name: str
) -> None:
    with pytest.raises(ApiException) as refused:
        _create(admin, namespace, _adapterdeployment(name))
    assert refused.value.status == 422
    assert "metadata.name must be a DNS-1035 label of at most 63 characters" in refused.value.body


def test_the_longest_valid_name_is_accepted(crds_installed: list[str], admin: ApiClient, namespace: str) -> None:
    name = "a" + "-b" * 31  # 63 characters
    assert _create(admin, namespace, _adapterdeployment(name))["metadata"]["name"] == name
