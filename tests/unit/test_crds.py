"""Unit: the checked-in CRDs are exactly what the API models generate, and they are structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from peft_operator.crdgen import render_crds

ROOT = Path(__file__).resolve().parents[2]
CRD_DIRS = [ROOT / "crds", ROOT / "charts" / "peft-operator" / "crds"]


@pytest.mark.parametrize("directory", CRD_DIRS, ids=lambda d: str(d.relative_to(ROOT)))
def test_checked_in_crds_equal_what_the_models_generate(directory: Path) -> None:
    generated = render_crds()
    # The chart's crds/ also carries Kopf's peering CRDs, which are not ours to generate.
    on_disk = {p.name: p.read_text() for p in directory.glob("*.peft.dev.yaml")}
    assert set(on_disk) == set(generated), "run `make crds`"
    for name, text in generated.items():
        assert on_disk[name] == text, f"{directory.name}/{name} is stale: run `make crds`"


def _walk(node: dict[str, Any], path: str) -> list[str]:
    """Structural-schema violations under one node (see apiextensions' structural schema rules)."""
    problems = []
    if "type" not in node:
        problems.append(f"{path}: no type")
    if "$ref" in node or "anyOf" in node or "allOf" in node:
        problems.append(f"{path}: $ref/anyOf/allOf left in")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: properties and additionalProperties together")
    for name, child in node.get("properties", {}).items():
        problems += _walk(child, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        problems += _walk(node["additionalProperties"], f"{path}{{}}")
    if "items" in node:
        problems += _walk(node["items"], f"{path}[]")
    if node.get("type") == "object" and not (
        "properties" in node or "additionalProperties" in node or node.get("x-kubernetes-preserve-unknown-fields")
    ):
        problems.append(f"{path}: object without properties")
    if node.get("type") == "string" and "enum" not in node and "maxLength" not in node and "format" not in node:
        problems.append(f"{path}: string without maxLength (CEL cost estimation needs one)")
    if node.get("type") == "array" and "maxItems" not in node and path.startswith("spec"):
        problems.append(f"{path}: array without maxItems (CEL cost estimation needs one)")
    return problems


@pytest.mark.parametrize("name", sorted(render_crds()))
def test_crd_schema_is_structural_and_cel_costs_are_bounded(name: str) -> None:
    crd = yaml.safe_load(render_crds()[name])
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec_problems = _walk(schema["properties"]["spec"], "spec")
    status_problems = [p for p in _walk(schema["properties"]["status"], "status") if "maxLength" not in p]
    assert spec_problems + status_problems == []


@pytest.mark.parametrize("name", sorted(render_crds()))
def test_every_spec_field_is_described_for_kubectl_explain(name: str) -> None:
    crd = yaml.safe_load(render_crds()[name])
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    undescribed: list[str] = []

    def visit(node: dict[str, Any], path: str) -> None:
        for field, child in node.get("properties", {}).items():
            if not child.get("description"):
                undescribed.append(f"{path}.{field}")
            visit(child, f"{path}.{field}")
        if "items" in node:
            visit(node["items"], f"{path}[]")

    visit(spec, "spec")
    assert undescribed == []


def test_crds_have_short_names_category_status_and_printer_columns() -> None:
    crds = {yaml.safe_load(t)["spec"]["names"]["kind"]: yaml.safe_load(t) for t in render_crds().values()}
    ftj, adep = crds["FineTuneJob"]["spec"], crds["AdapterDeployment"]["spec"]
    assert ftj["names"]["shortNames"] == ["ftj"] and adep["names"]["shortNames"] == ["adep"]
    assert "peft" in ftj["names"]["categories"] and "peft" in adep["names"]["categories"]
    for spec in (ftj, adep):
        assert spec["versions"][0]["subresources"] == {"status": {}}
    assert [c["name"] for c in ftj["versions"][0]["additionalPrinterColumns"] if "priority" not in c] == [
        "Phase",
        "Progress",
        "Loss",
        "Age",
    ]
    assert {"Adapters", "Replicas", "Age"} <= {c["name"] for c in adep["versions"][0]["additionalPrinterColumns"]}


def test_finetunejob_spec_is_immutable_by_cel() -> None:
    crd = yaml.safe_load(render_crds()["finetunejobs.peft.dev.yaml"])
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert {
        "rule": "self == oldSelf",
        "message": "spec is immutable: create a new FineTuneJob for a new version",
    } in spec["x-kubernetes-validations"]


def test_adapters_are_a_list_map_keyed_by_name() -> None:
    crd = yaml.safe_load(render_crds()["adapterdeployments.peft.dev.yaml"])
    adapters = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["adapters"]
    assert adapters["x-kubernetes-list-type"] == "map" and adapters["x-kubernetes-list-map-keys"] == ["name"]
