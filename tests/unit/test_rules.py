"""Unit: each cross-field rule is declared once (api/rules.py) and both the CRD's CEL and the model refuse
with its message; the method table covers every method."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from peft_operator.api.adapterdeployment import AdapterDeployment, AdapterDeploymentSpec, AdapterSource, Limits
from peft_operator.api.finetunejob import FineTuneJob, FineTuneJobSpec, Training
from peft_operator.api.methods import METHODS, Method, MethodType, method_of_adapter_config
from peft_operator.api.rules import RuledModel, cel_validations
from peft_operator.api.validation import SpecError, parse_object

ROOT = Path(__file__).resolve().parents[2]
RULED = (AdapterSource, AdapterDeploymentSpec, Limits, Training, FineTuneJobSpec, Method)


def _crd_rule_sets() -> list[list[dict[str, str]]]:
    found: list[list[dict[str, str]]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "x-kubernetes-validations" in node:
                found.append(node["x-kubernetes-validations"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in sorted((ROOT / "crds").glob("*.yaml")):
        walk(yaml.safe_load(path.read_text()))
    return found


@pytest.mark.parametrize("model", RULED, ids=lambda m: m.__name__)
def test_a_models_rules_are_its_crd_nodes_cel_rules(model: type[RuledModel]) -> None:
    assert model.RULES
    assert cel_validations(model.RULES) in _crd_rule_sets()


@pytest.mark.parametrize(
    ("model", "body", "message"),
    [
        (Training, {"epochs": 1, "maxSteps": 5}, "set epochs or maxSteps, not both"),
        (AdapterSource, {"uri": "s3://adapters/tenant-a"}, "uri needs sha256"),
        (Method, {"type": "lora", "ia3": {}}, "ia3 parameters are set but type is not 'ia3'"),
        (Method, {"type": "qlora"}, "type qlora needs qlora.quantization"),
    ],
)
def test_the_model_refuses_with_the_cel_rules_message(
    model: type[RuledModel], body: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        model.model_validate(body)
    (rule,) = [r for r in model.RULES if r.message.startswith(message)]
    assert rule.message in str(refused.value)


@pytest.mark.parametrize(
    ("kind", "name"), [(FineTuneJob, "x" * 53), (AdapterDeployment, "a.b")], ids=["ftj-too-long", "adep-dots"]
)
def test_a_name_rule_is_the_crds_root_rule_and_the_models_refusal(
    kind: type[FineTuneJob] | type[AdapterDeployment], name: str
) -> None:
    crd = yaml.safe_load((ROOT / "crds" / f"{kind.PLURAL}.peft.dev.yaml").read_text())
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert root["x-kubernetes-validations"] == cel_validations((kind.NAME_RULE,))
    with pytest.raises(SpecError) as refused:
        parse_object(kind, {"metadata": {"name": name}, "spec": {}})
    assert f"metadata: {kind.NAME_RULE.message}" in refused.value.problems


def test_every_method_has_traits_and_adapter_configs_map_back() -> None:
    assert set(METHODS) == set(MethodType)
    assert method_of_adapter_config({"peft_type": "LORA", "use_dora": True}) == "dora"
    assert method_of_adapter_config({"peft_type": "PREFIX_TUNING"}) == "prefix"
    assert method_of_adapter_config({"peft_type": "BOTTLENECK"}) == "adapter"
