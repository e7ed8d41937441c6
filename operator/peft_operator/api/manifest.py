"""manifest.json: written by the trainer next to the adapter, verified by the agent before loading.

The adapter's digest (AdapterRecord.sha256, AdapterDeployment `sha256`) is the sha256 of this file, which
lists the sha256 of every other file: one digest pins the whole directory."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from .base import ApiModel, Sha256
from .finetunejob import DatasetReport

MANIFEST_FILE_NAME = "manifest.json"


class ManifestBaseModel(ApiModel):
    uri: str = Field(description="Base model URI the adapter was trained on.")
    revision: str | None = None
    architecture: str | None = Field(default=None, description="e.g. LlamaForCausalLM.")
    hidden_size: int | None = None
    num_layers: int | None = None


class AdapterManifest(ApiModel):
    """Everything a server needs to decide whether it can load the adapter, and to verify it."""

    format_version: int = 1
    files: dict[str, Sha256] = Field(description="Relative path -> sha256 of every file except manifest.json.")
    base_model: ManifestBaseModel
    method: str = Field(description="lora, qlora, dora, ia3, prefix, prompt or adapter.")
    parameters: dict[str, Any] = Field(default_factory=dict, description="The method's parameters, as trained.")
    rank: int | None = None
    target_modules: list[str] = Field(default_factory=list)
    dataset: DatasetReport | None = None
    metrics: dict[str, float] = Field(default_factory=dict, description="Final loss, evalLoss, steps, ...")
    versions: dict[str, str] = Field(default_factory=dict, description="torch, transformers, peft, ...")
