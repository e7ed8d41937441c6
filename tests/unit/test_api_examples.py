"""Unit: every example is valid for the CRD schema and the models; every broken example is refused.

Pure logic: the CRD schema check uses openapi-schema-validator (no CEL, no defaulting: the
integration tests do that against the real kube-apiserver)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_schema_validator import OAS30Validator

from peft_operator.api import AdapterDeployment, FineTuneJob
from peft_operator.api.validation import SpecError, parse_object
from peft_operator.crdgen import adapterdeployment_crd, finetunejob_crd

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MODELS = {"FineTuneJob": FineTuneJob, "AdapterDeployment": AdapterDeployment}
SCHEMAS = {
    crd["spec"]["names"]["kind"]: crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for crd in (finetunejob_crd(), adapterdeployment_crd())
}


def _examples() -> list[Path]:
    return sorted(EXAMPLES.glob("*.yaml"))


def _broken() -> list[Path]:
    return sorted((EXAMPLES / "broken").glob("*.yaml"))


def _header(path: Path) -> dict[str, str]:
    """The `# key: value` comment lines that say what a broken example must produce."""
    fields = {}
    for line in path.read_text().splitlines():
        if line.startswith("# ") and ": " in line:
            key, value = line[2:].split(": ", 1)
            fields[key] = value
    return fields


def _schema_errors(obj: dict[str, Any]) -> list[str]:
    validator = OAS30Validator(SCHEMAS[obj["kind"]])
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]


def test_there_is_an_example_per_method_and_a_quickstart_per_kind() -> None:
    names = {p.stem for p in _examples()}
    for method in ("lora", "qlora", "dora", "ia3", "prefix", "prompt", "adapter"):
        assert f"finetunejob-{method}" in names
    assert {"finetunejob-quickstart", "adapterdeployment-quickstart", "finetunejob-dpo"} <= names


@pytest.mark.parametrize("path", _examples(), ids=lambda p: p.stem)
def test_example_is_valid_for_crd_schema_and_models(path: Path) -> None:
    for obj in yaml.safe_load_all(path.read_text()):
        assert _schema_errors(obj) == []
        parse_object(MODELS[obj["kind"]], obj)


@pytest.mark.parametrize("path", _examples(), ids=lambda p: p.stem)
def test_finetunejob_example_method_objective_strategy_or_scale_matches_its_file_name(path: Path) -> None:
    obj = yaml.safe_load(path.read_text())
    if obj["kind"] == "FineTuneJob" and not path.stem.endswith("quickstart"):
        job = FineTuneJob.model_validate(obj)
        named = path.stem.removeprefix("finetunejob-")
        if named == "multi-node":
            assert job.spec.resources.nodes > 1
        elif named.endswith("-fsdp"):
            assert job.spec.training.strategy.value == "fsdp" and job.spec.resources.processes > 1
            assert named.removesuffix("-fsdp") == job.spec.method.type.value
        else:
            assert named in (job.spec.method.type.value, job.spec.training.objective.value)


def test_there_are_at_least_fifteen_broken_examples() -> None:
    assert len(_broken()) >= 15


@pytest.mark.parametrize("path", _broken(), ids=lambda p: p.stem)
def test_broken_example_is_rejected_naming_the_field_and_the_fix(path: Path) -> None:
    header = _header(path)
    obj = yaml.safe_load(path.read_text())
    with pytest.raises(SpecError) as caught:
        parse_object(MODELS[obj["kind"]], obj)
    message = str(caught.value)
    assert header["expect"] in message
    # The problem is reported at the field itself or, for a rule across fields, at the object holding it.
    paths = [problem.split(": ", 1)[0] for problem in caught.value.problems]
    field = header["field"]
    assert any(field == p or field.startswith((p + ".", p + "[")) for p in paths), paths


@pytest.mark.parametrize("path", _broken(), ids=lambda p: p.stem)
def test_operator_layer_broken_examples_pass_the_schema(path: Path) -> None:
    """What only the operator can check must get past the structural schema (CEL aside)."""
    header = _header(path)
    obj = yaml.safe_load(path.read_text())
    if header["layer"] == "operator":
        assert _schema_errors(obj) == []
    else:
        assert header["layer"] == "schema"
