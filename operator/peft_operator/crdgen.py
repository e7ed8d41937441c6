"""Generate the CustomResourceDefinitions from the API models (`make crds`); never edit crds/ by hand."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import core_schema

from .api import GROUP, VERSION, AdapterAttachment, AdapterDeployment, FineTuneJob
from .api.rules import cel_validations

JsonSchema = dict[str, Any]
Kind = type[FineTuneJob] | type[AdapterDeployment] | type[AdapterAttachment]

# Keys of pydantic's JSON Schema that apiextensions.k8s.io/v1 has no use for.
_DROPPED_KEYS = {"title", "examples"}


class CrdSchemaError(ValueError):
    """The models produced a schema that cannot be a structural CRD schema."""


def structural_schema(schema: JsonSchema, defs: dict[str, JsonSchema], keep_defaults: bool = True) -> JsonSchema:
    """Turn one pydantic JSON Schema node into a structural OpenAPI v3 schema (refs inlined, nulls gone)."""
    node = dict(schema)
    if "$ref" in node:
        target = defs[node.pop("$ref").split("/")[-1]]
        node = {**target, **node}  # the field's own description and default win over the model's
    if "allOf" in node and len(node["allOf"]) == 1:
        node = {**node.pop("allOf")[0], **node}
        return structural_schema(node, defs, keep_defaults)
    if "anyOf" in node:
        members = [m for m in node.pop("anyOf") if m.get("type") != "null"]
        if len(members) != 1:
            raise CrdSchemaError(f"unions are not structural: {members}")
        return structural_schema({**members[0], **node}, defs, keep_defaults)
    if "$ref" in node:
        return structural_schema(node, defs, keep_defaults)

    out: JsonSchema = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS or key == "$defs":
            continue
        if key == "default":
            if keep_defaults and value is not None:
                out["default"] = value
        elif key == "const":
            out["enum"] = [value]
        elif key == "properties":
            out["properties"] = {k: structural_schema(v, defs, keep_defaults) for k, v in value.items()}
        elif key == "items":
            out["items"] = structural_schema(value, defs, keep_defaults)
        elif key == "additionalProperties":
            if isinstance(value, dict):
                out["additionalProperties"] = structural_schema(value, defs, keep_defaults)
            # `False` (extra=forbid) is implied by a structural schema: unknown fields are pruned.
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
        elif key == "uniqueItems":
            out["x-kubernetes-list-type"] = "set"
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if "type" not in out:
        raise CrdSchemaError(f"untyped schema node: {node}")
    if out["type"] == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


class _FactoryDefaults(GenerateJsonSchema):
    """Fields with a default_factory (an optional block such as `limits`) get a structural default too:
    `{}` for a model, whose own fields the apiserver then defaults, else the factory's value. Without it
    an omitted block stays absent and every CEL rule that reads it fails on the missing key."""

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is None or schema.get("default_factory_takes_data"):
            return super().get_default_value(schema)
        value = factory()  # type: ignore[call-arg]
        return {} if isinstance(value, BaseModel) else value


def _model_schema(model: type[BaseModel], keep_defaults: bool) -> JsonSchema:
    full = model.model_json_schema(by_alias=True, ref_template="#/$defs/{model}", schema_generator=_FactoryDefaults)
    return structural_schema(full, full.get("$defs", {}), keep_defaults)


def _resource_schema(kind: Kind) -> JsonSchema:
    fields = kind.model_fields
    spec_type = fields["spec"].annotation
    status_type = fields["status"].annotation.__args__[0]  # type: ignore[union-attr]
    schema: JsonSchema = {
        "type": "object",
        "description": (kind.__doc__ or "").strip(),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "peft.dev/v1alpha1"},
            "kind": {"type": "string", "description": kind.__name__},
            "metadata": {"type": "object"},
            "spec": _model_schema(spec_type, keep_defaults=True),  # type: ignore[arg-type]
            # Defaults in status would be written by the apiserver, not the operator: leave them out.
            "status": _model_schema(status_type, keep_defaults=False),
        },
    }
    # Rules on metadata.name live at the root: the apiserver takes no CEL inside metadata.
    name_rule = getattr(kind, "NAME_RULE", None)  # kinds with nothing named after them have none
    if name_rule is not None:
        schema["x-kubernetes-validations"] = cel_validations((name_rule,))
    return schema


def _crd(
    kind: Kind,
    columns: list[dict[str, Any]],
) -> dict[str, Any]:
    name = kind.KIND
    version: dict[str, Any] = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "subresources": {"status": {}},
        "additionalPrinterColumns": columns,
        "schema": {"openAPIV3Schema": _resource_schema(kind)},
    }
    selectable = getattr(kind, "SELECTABLE_FIELDS", ())
    if selectable:  # field selectors on custom resources (GA in Kubernetes 1.32)
        version["selectableFields"] = [{"jsonPath": path} for path in selectable]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{kind.PLURAL}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "peft-operator"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": name,
                "listKind": f"{name}List",
                "plural": kind.PLURAL,
                "singular": name.lower(),
                "shortNames": [kind.SHORT_NAME],
                "categories": ["peft", "all-peft"],
            },
            "versions": [version],
        },
    }


def _column(name: str, path: str, type_: str, description: str, priority: int = 0) -> dict[str, Any]:
    column: dict[str, Any] = {"name": name, "type": type_, "jsonPath": path, "description": description}
    if priority:
        column["priority"] = priority
    return column


_AGE = _column("Age", ".metadata.creationTimestamp", "date", "Time since creation.")


def finetunejob_crd() -> dict[str, Any]:
    return _crd(
        FineTuneJob,
        columns=[
            _column("Phase", ".status.phase", "string", "Pending, Queued, Running, Succeeded, Failed, Cancelled."),
            _column("Progress", ".status.progress.percent", "integer", "Percent of the planned steps done."),
            _column("Loss", ".status.progress.loss", "number", "Recent training loss."),
            _column("Method", ".spec.method.type", "string", "PEFT method.", priority=1),
            _column("Adapter", ".status.adapter.uri", "string", "Where the trained adapter is.", priority=1),
            _AGE,
        ],
    )


def adapterdeployment_crd() -> dict[str, Any]:
    return _crd(
        AdapterDeployment,
        columns=[
            _column("Ready", '.status.conditions[?(@.type=="Ready")].status', "string", "Every adapter serving."),
            _column("Adapters", ".status.adaptersReady", "string", "Loaded / desired adapters."),
            _column("Replicas", ".status.readyReplicas", "integer", "Pods serving every adapter."),
            _column("Engine", ".spec.runtime.engine", "string", "builtin or vllm.", priority=1),
            _AGE,
        ],
    )


def adapterattachment_crd() -> dict[str, Any]:
    return _crd(
        AdapterAttachment,
        columns=[
            _column("Deployment", ".spec.adapterDeploymentRef.name", "string", "The shared AdapterDeployment."),
            _column(
                "Accepted", '.status.conditions[?(@.type=="Accepted")].status', "string", "Allowed by the deployment."
            ),
            _column("Ready", '.status.conditions[?(@.type=="Ready")].status', "string", "Loaded on every replica."),
            _column("Model", ".status.servedName", "string", "The `model` clients send."),
            _column("Namespace", ".spec.adapterDeploymentRef.namespace", "string", "The deployment's.", priority=1),
            _AGE,
        ],
    )


# YAML 1.2 readers (Go's, the apiserver's) take 2e-4 for a number; PyYAML (1.1) writes it bare.
_YAML12_NUMBER = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")


class _CrdDumper(yaml.SafeDumper):
    pass


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = '"' if _YAML12_NUMBER.match(value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_CrdDumper.add_representer(str, _represent_str)


def render_crds() -> dict[str, str]:
    """File name -> YAML text for every CRD."""
    crds = [finetunejob_crd(), adapterdeployment_crd(), adapterattachment_crd()]
    header = "# GENERATED by `make crds` from operator/peft_operator/api: do not edit.\n"
    return {
        f"{crd['metadata']['name']}.yaml": header + yaml.dump(crd, Dumper=_CrdDumper, sort_keys=False, width=120)
        for crd in crds
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the CRDs generated from the API models.")
    parser.add_argument("out", nargs="+", type=Path, help="directories to write the CRD files into")
    args = parser.parse_args(argv)
    for directory in args.out:
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in render_crds().items():
            (directory / name).write_text(text)


if __name__ == "__main__":
    main()
