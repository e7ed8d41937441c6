"""The finished adapter: the adapter files, manifest.json (sha256 of each), an optional merged model.

The adapter directory is the output location's top level (checkpoints/ and merged/ sit beside the files
and are not part of it). The adapter's digest is the sha256 of manifest.json, which lists every other
file's sha256, so one digest pins the whole adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from peft_operator.api.finetunejob import DatasetReport, FineTuneJobSpec
from peft_operator.api.manifest import MANIFEST_FILE_NAME, AdapterManifest, ManifestBaseModel

from ..digest import sha256_file, write_manifest  # the agent verifies with the same module

MERGED_DIR = "merged"
_VERSIONED = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "safetensors", "peft-operator")


@dataclass(frozen=True)
class WrittenAdapter:
    files: list[str]  # relative to the output directory, manifest.json last
    sha256: str  # of manifest.json
    size_bytes: int


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def write_adapter(
    model: Any,
    directory: Path,
    *,
    spec: FineTuneJobSpec,
    model_config: Any,
    target_modules: list[str],
    dataset: DatasetReport,
    metrics: dict[str, float],
) -> WrittenAdapter:
    """Save the adapter, then manifest.json describing and pinning it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST_FILE_NAME).unlink(missing_ok=True)  # the old manifest must not describe new files
    model.save_pretrained(str(directory))
    files = sorted(p.name for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))
    files = [f for f in files if f != MANIFEST_FILE_NAME]
    manifest = AdapterManifest(
        files={name: sha256_file(directory / name) for name in files},
        base_model=ManifestBaseModel(
            uri=spec.base_model.uri,
            revision=spec.base_model.revision,
            architecture=(getattr(model_config, "architectures", None) or [None])[0],
            hidden_size=getattr(model_config, "hidden_size", None),
            num_layers=getattr(model_config, "num_hidden_layers", None),
        ),
        method=spec.method.type.value,
        parameters=spec.method.parameters.to_wire(),
        rank=spec.method.rank,
        target_modules=target_modules,
        dataset=dataset,
        metrics=metrics,
        versions=package_versions(),
    )
    digest = write_manifest(directory, manifest)
    all_files = [*files, MANIFEST_FILE_NAME]
    return WrittenAdapter(
        files=all_files,
        sha256=digest,
        size_bytes=sum((directory / f).stat().st_size for f in all_files),
    )


def export_merged(model_dir: Path, adapter_dir: Path, dtype: Any) -> list[str]:
    """Base model (full precision, also for qlora) + adapter, merged and saved to <output>/merged."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = adapter_dir / MERGED_DIR
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(target))
    AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(str(target))
    return sorted(f"{MERGED_DIR}/{p.relative_to(target)}" for p in target.rglob("*") if p.is_file())
