"""Can this replica's engine serve a verified adapter? Checked before the engine is asked, without torch.

- the manifest's base model (uri, revision) must be the one the replica serves;
- the method must be one the engine hot-loads (ENGINE_METHODS), judged from both the manifest and the
  adapter's own config; the rank must not exceed maxRank;
- with `--base-model-dir`, every module the adapter's weights sit on must exist in the base model's
  checkpoint with matching shapes (read from the safetensors headers; no weights are loaded).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from peft_operator.api.manifest import AdapterManifest
from peft_operator.api.methods import METHODS, VLLM_METHODS, method_of_adapter_config
from peft_runtime.common.errors import AdapterCorrupt, IncompatibleBaseModel, RankTooLarge, UnsupportedMethod

ENGINE_METHODS = {
    # the built-in engine hot-loads everything the trainer produces (docs/serving.md)
    "builtin": tuple(m.value for m in METHODS),
    # vLLM serves plain LoRA weights (qlora adapters are such weights): the API's method table says which
    "vllm": tuple(m.value for m in VLLM_METHODS),
}
_ELSEWHERE = {
    "builtin": "",
    "vllm": "; serve it on the built-in engine (runtime.engine: builtin), or merged if the method merges "
    "(lora, dora, qlora, ia3: peft-runtime train --merge)",
}
_PEFT_PREFIX = "base_model.model."


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape, from a .safetensors file's JSON header (8-byte length, then JSON)."""
    with path.open("rb") as stream:
        (length,) = struct.unpack("<Q", stream.read(8))
        if length > 100_000_000:
            raise ValueError(f"{path} has an implausible header length {length}")
        header = json.loads(stream.read(length))
    return {name: info["shape"] for name, info in header.items() if name != "__metadata__"}


def _adapter_config(adapter_dir: Path) -> dict[str, Any]:
    """adapter_config.json, or {} when there is none (the engine then refuses the adapter itself)."""
    path = adapter_dir / "adapter_config.json"
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except ValueError as error:
        raise AdapterCorrupt(f"adapter_config.json is not valid JSON: {error}") from error
    if not isinstance(config, dict):
        raise AdapterCorrupt("adapter_config.json is not a JSON object")
    return config


def _config_method(adapter_dir: Path) -> str | None:
    """The method the adapter's own config says it is (a manifest can be wrong), None if unknown."""
    config = _adapter_config(adapter_dir)
    if not config:
        return None
    return method_of_adapter_config(config)


@dataclass
class Compatibility:
    max_rank: int
    base_model_uri: str | None = None
    base_model_revision: str | None = None
    base_model_dir: Path | None = None

    def check(self, manifest: AdapterManifest, adapter_dir: Path, engine: str) -> None:
        """Raise a ServingError (UnsupportedMethod, IncompatibleBaseModel, RankTooLarge, ...) saying why not."""
        self._check_method(manifest, adapter_dir, engine)
        self._check_identity(manifest)
        rank = self._rank(manifest, adapter_dir)
        if rank is not None and rank > self.max_rank:
            raise RankTooLarge(
                f"the adapter has rank {rank}, above maxRank {self.max_rank}: retrain with a smaller r or raise "
                "limits.maxRank"
            )
        if self.base_model_dir is not None:
            self._check_modules(adapter_dir)

    def _check_method(self, manifest: AdapterManifest, adapter_dir: Path, engine: str) -> None:
        servable = ENGINE_METHODS.get(engine, ENGINE_METHODS["builtin"])
        for method in (manifest.method, _config_method(adapter_dir)):
            if method is not None and method not in servable:
                raise UnsupportedMethod(
                    f"the adapter was trained with '{method}'; the {engine} engine hot-loads "
                    f"{', '.join(servable)} adapters{_ELSEWHERE.get(engine, '')}"
                )

    def _check_identity(self, manifest: AdapterManifest) -> None:
        trained = manifest.base_model
        if self.base_model_uri is not None and trained.uri != self.base_model_uri:
            raise IncompatibleBaseModel(
                f"the adapter was trained on {trained.uri}; this deployment serves {self.base_model_uri}"
            )
        if self.base_model_revision is not None and trained.revision not in (None, self.base_model_revision):
            raise IncompatibleBaseModel(
                f"the adapter was trained on revision {trained.revision} of {trained.uri}; this deployment serves "
                f"revision {self.base_model_revision}"
            )
        config = self._base_config
        for what, theirs, ours in (
            ("architecture", trained.architecture, (config.get("architectures") or [None])[0]),
            ("hidden size", trained.hidden_size, config.get("hidden_size")),
            ("layer count", trained.num_layers, config.get("num_hidden_layers")),
        ):
            if theirs is not None and ours is not None and theirs != ours:
                raise IncompatibleBaseModel(
                    f"the adapter's base model has {what} {theirs}; this deployment's has {ours}"
                )

    def _rank(self, manifest: AdapterManifest, adapter_dir: Path) -> int | None:
        ranks = [manifest.rank] if manifest.rank is not None else []
        config = _adapter_config(adapter_dir)
        if config.get("peft_type", "LORA").upper() == "LORA":
            ranks += [int(r) for r in [config.get("r"), *(config.get("rank_pattern") or {}).values()] if r]
        return max(ranks) if ranks else None

    @cached_property
    def _base_config(self) -> dict[str, Any]:
        if self.base_model_dir is None or not (self.base_model_dir / "config.json").is_file():
            return {}
        loaded: dict[str, Any] = json.loads((self.base_model_dir / "config.json").read_text())
        return loaded

    @cached_property
    def _base_shapes(self) -> dict[str, list[int]]:
        assert self.base_model_dir is not None
        shapes: dict[str, list[int]] = {}
        for file in sorted(self.base_model_dir.glob("*.safetensors")):
            shapes.update(safetensors_shapes(file))
        return shapes

    def _check_modules(self, adapter_dir: Path) -> None:
        weights = adapter_dir / "adapter_model.safetensors"
        if not weights.is_file() or not self._base_shapes:
            return  # nothing to compare (a .bin adapter, or a base model without safetensors): the engine checks
        try:
            adapter = safetensors_shapes(weights)
            config = json.loads((adapter_dir / "adapter_config.json").read_text())
        except (OSError, ValueError, struct.error) as error:
            raise AdapterCorrupt(f"the adapter's weights or config are unreadable: {error}") from error
        transposed = bool(config.get("fan_in_fan_out"))  # GPT-2 style Conv1D weights are [in, out]
        tied = bool(self._base_config.get("tie_word_embeddings"))
        for key, shape in adapter.items():
            module, found, part = key.removeprefix(_PEFT_PREFIX).partition(".lora_")
            if not found:
                continue
            base = self._base_shapes.get(f"{module}.weight")
            if base is None and tied and module == "lm_head":
                base = self._base_shapes.get("model.embed_tokens.weight")
            if base is None:
                raise IncompatibleBaseModel(f"the adapter targets {module}, which the base model does not have")
            if len(base) != 2 or len(shape) != 2:
                continue
            # (fan_in, fan_out): Linear weights are [out, in]; Embedding weights [num_embeddings, dim]
            fan_in, fan_out = (base[0], base[1]) if transposed or part.startswith("embedding") else (base[1], base[0])
            wrong = (part in ("A.weight", "embedding_A") and shape[1] != fan_in) or (
                part in ("B.weight", "embedding_B") and shape[0] != fan_out
            )
            if wrong:
                raise IncompatibleBaseModel(
                    f"the adapter's {module}.lora_{part} has shape {shape}, which does not fit {module} {base}: "
                    "it was trained on a different base model"
                )
