"""Reading an adapter directory and deciding whether this base model can serve it.

Everything here runs before the model lock is taken (file checks, digests, config, weights into memory,
shapes), so a load never stalls requests for other adapters while it reads or verifies files.

The built-in engine hot-loads every method the trainer produces: the LoRA family (LoRA, DoRA, and LoRA
weights trained with QLoRA, served on the unquantized base) through peft's layers, and IA3, bottleneck
adapters, prefix and prompt tuning through its own code (ia3.py, bottleneck_rows.py, virtual_tokens.py).

A training output folder serves as it is: files beside the adapter (checkpoints/, merged/) are ignored,
while the files the engine reads must be listed in manifest.json when there is one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from peft_operator.api.manifest import MANIFEST_FILE_NAME, AdapterManifest
from peft_operator.api.methods import METHODS, method_of_adapter_config
from peft_runtime.bottleneck import PEFT_TYPE as BOTTLENECK_TYPE
from peft_runtime.digest import DigestMismatchError, sha256_file, verify_adapter_dir

from ..common.errors import (
    AdapterCorrupt,
    BadRequest,
    ChecksumMismatch,
    IncompatibleBaseModel,
    RankTooLarge,
    UnsupportedMethod,
)
from .bottleneck_rows import BottleneckAdapter, read_bottleneck
from .ia3 import Ia3Vectors, read_ia3
from .virtual_tokens import VirtualTokens, read_virtual_tokens

SERVABLE_METHODS = tuple(m.value for m in METHODS)  # every method the trainer produces
# peft_types the engine applies with its own code (LoRA goes through peft's layers)
_OWN_PEFT_TYPES = {traits.peft_type for traits in METHODS.values()} - {"LORA"}
_PEFT_TYPES_TEXT = "LORA, IA3, PREFIX_TUNING, PROMPT_TUNING or BOTTLENECK"
_READ_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
_PEFT_PREFIX = "base_model.model."
# LoraConfig options whose layers cannot take per-row adapters in one batch (or that this engine never tested).
_REFUSED_OPTIONS = {
    "target_parameters": "LoRA on raw parameters (target_parameters)",
    "layer_replication": "layer replication",
    "alora_invocation_tokens": "activated LoRA (aLoRA)",
    "use_qalora": "QALoRA",
    "megatron_config": "Megatron parallel LoRA layers",
}


@dataclass(frozen=True)
class BaseModelInfo:
    """What adapters are checked against: identity, architecture, and the shape of every module."""

    served_name: str
    root: str
    uri: str | None
    revision: str | None
    architecture: str | None
    hidden_size: int | None
    num_layers: int | None
    max_model_len: int | None
    linear_shapes: dict[str, tuple[int, int]] = field(repr=False)  # module path -> (in, out)
    params: dict[str, torch.Tensor] = field(repr=False)  # the base model's own parameters (read only)
    config: Any = field(repr=False)  # the model's transformers config (KV-cache shape for prefixes)
    dtype: torch.dtype = torch.float32

    @classmethod
    def of(cls, model: Any, *, served_name: str, root: str, uri: str | None, revision: str | None) -> BaseModelInfo:
        from transformers.pytorch_utils import Conv1D

        shapes: dict[str, tuple[int, int]] = {}
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                shapes[name] = (module.in_features, module.out_features)
            elif isinstance(module, torch.nn.Embedding):
                shapes[name] = (module.num_embeddings, module.embedding_dim)
            elif isinstance(module, Conv1D):
                shapes[name] = (module.weight.shape[0], module.weight.shape[1])
        config = model.config
        return cls(
            served_name=served_name,
            root=root,
            uri=uri,
            revision=revision,
            architecture=(config.architectures or [None])[0],
            hidden_size=getattr(config, "hidden_size", None),
            num_layers=getattr(config, "num_hidden_layers", None),
            max_model_len=getattr(config, "max_position_embeddings", None),
            linear_shapes=shapes,
            params=dict(model.named_parameters()),
            config=config,
            dtype=model.get_input_embeddings().weight.dtype,
        )


@dataclass
class PreparedAdapter:
    """An adapter read into memory and checked: attaching it to the model is all that is left."""

    name: str
    path: Path
    method: str  # lora, dora, ia3, prefix, prompt or adapter
    config: Any  # peft.LoraConfig for the LoRA family, else None
    weights: dict[str, torch.Tensor] = field(repr=False)  # LoRA weights (peft's keys); empty for other methods
    own: Ia3Vectors | BottleneckAdapter | VirtualTokens | None  # what the engine's own code applies (not LoRA)
    rank: int  # 0 where the method has none
    digest: str | None
    size_bytes: int


def prepare_adapter(name: str, path: Path, base: BaseModelInfo, *, max_rank: int, device: str) -> PreparedAdapter:
    """Read and check the adapter at `path`; raise a ServingError that says what is wrong and how to fix it."""
    if not path.is_absolute():
        raise BadRequest(f"lora_path '{path}' must be an absolute path")
    if not path.is_dir():
        raise BadRequest(f"lora_path '{path}' is not a directory on the server")
    digest = _check_manifest(path, base)
    raw = _read_raw_config(path)
    peft_type = str(raw.get("peft_type", "")).upper()
    if peft_type in _OWN_PEFT_TYPES:
        return _prepare_own(name, path, peft_type, raw, base, digest, device)
    if peft_type != "LORA":
        raise UnsupportedMethod(
            f"adapter '{name}' is a peft {peft_type or 'unknown'} adapter; the built-in engine hot-loads "
            f"peft_type {_PEFT_TYPES_TEXT} (the methods the trainer offers)"
        )
    config = _lora_config(path, raw)
    method = "dora" if config.use_dora else "lora"
    rank = max([int(config.r), *(int(r) for r in (config.rank_pattern or {}).values())])
    if rank > max_rank:
        raise RankTooLarge(
            f"adapter '{name}' has rank {rank}, above this server's maxRank {max_rank}: "
            "retrain with a smaller r or raise limits.maxRank"
        )
    weights = _read_weights(path)
    if not any(".lora_" in key for key in weights):
        raise AdapterCorrupt(f"{path}/adapter_model.safetensors holds no LoRA weights")
    _drop_base_copies(name, weights, base)
    _check_shapes(name, weights, base)
    weights = {key: tensor.to(device) for key, tensor in weights.items()}
    size = sum(t.numel() * t.element_size() for t in weights.values())
    return PreparedAdapter(name, path, method, config, weights, None, rank, digest, size)


def _prepare_own(
    name: str, path: Path, peft_type: str, raw: dict[str, Any], base: BaseModelInfo, digest: str | None, device: str
) -> PreparedAdapter:
    """IA3, bottleneck, prefix or prompt tuning: read into the objects the engine's own code applies."""
    weights = _read_weights(path)
    size = sum(t.numel() * t.element_size() for t in weights.values())
    own: Ia3Vectors | BottleneckAdapter | VirtualTokens
    if peft_type == "IA3":
        own = read_ia3(
            name, raw, {k: t.to(device=device, dtype=base.dtype) for k, t in weights.items()}, base.linear_shapes
        )
    elif peft_type == BOTTLENECK_TYPE:
        own = read_bottleneck(
            name,
            raw,
            weights,
            hidden_size=base.hidden_size,
            num_layers=base.num_layers,
            dtype=base.dtype,
            device=device,
        )
    else:
        own = read_virtual_tokens(name, peft_type, weights, base.config, dtype=base.dtype, device=device)
    method = method_of_adapter_config({"peft_type": peft_type})
    return PreparedAdapter(name, path, method, None, {}, own, 0, digest, size)


def _check_manifest(path: Path, base: BaseModelInfo) -> str | None:
    """Verify files against manifest.json when there is one; compare its base model with ours."""
    if not (path / MANIFEST_FILE_NAME).is_file():
        return None
    try:
        manifest: AdapterManifest = verify_adapter_dir(path, allow_unlisted=True)
    except DigestMismatchError as error:
        raise ChecksumMismatch(f"{path}: {error}") from error
    except ValueError as error:  # pydantic's ValidationError is a ValueError
        raise AdapterCorrupt(f"{path}/{MANIFEST_FILE_NAME} is not a valid adapter manifest: {error}") from error
    unlisted = [f for f in _READ_FILES if (path / f).is_file() and f not in manifest.files]
    if unlisted:
        raise ChecksumMismatch(f"{path}: {', '.join(unlisted)} not in {MANIFEST_FILE_NAME}; refusing to load them")
    if manifest.method not in SERVABLE_METHODS:
        raise UnsupportedMethod(
            f"the adapter was trained with '{manifest.method}'; the built-in engine hot-loads "
            f"{', '.join(SERVABLE_METHODS)} adapters"
        )
    trained = manifest.base_model
    if base.uri is not None and trained.uri != base.uri:
        raise IncompatibleBaseModel(f"the adapter was trained on {trained.uri}; this server serves {base.uri}")
    if base.revision is not None and trained.revision is not None and trained.revision != base.revision:
        raise IncompatibleBaseModel(
            f"the adapter was trained on revision {trained.revision} of {trained.uri}; "
            f"this server serves revision {base.revision}"
        )
    for what, theirs, ours in (
        ("architecture", trained.architecture, base.architecture),
        ("hidden size", trained.hidden_size, base.hidden_size),
        ("layer count", trained.num_layers, base.num_layers),
    ):
        if theirs is not None and ours is not None and theirs != ours:
            raise IncompatibleBaseModel(f"the adapter's base model has {what} {theirs}; this server's has {ours}")
    return sha256_file(path / MANIFEST_FILE_NAME)


def _read_raw_config(path: Path) -> dict[str, Any]:
    config_path = path / "adapter_config.json"
    if not config_path.is_file():
        raise AdapterCorrupt(f"{path} has no adapter_config.json: it is not a saved peft adapter")
    try:
        raw = json.loads(config_path.read_text())
    except (OSError, ValueError) as error:
        raise AdapterCorrupt(f"{config_path} is not readable JSON: {error}") from error
    if not isinstance(raw, dict):
        raise AdapterCorrupt(f"{config_path} is not a JSON object")
    return raw


def _lora_config(path: Path, raw: dict[str, Any]) -> Any:
    from peft import LoraConfig

    for option, what in _REFUSED_OPTIONS.items():
        if raw.get(option) not in (None, False, {}, []):
            raise UnsupportedMethod(
                f"the adapter uses {what}, which the built-in engine cannot batch; retrain without it"
            )
    try:
        config = LoraConfig.from_pretrained(str(path))
    except Exception as error:  # peft raises TypeError/ValueError for unknown or inconsistent fields
        raise AdapterCorrupt(f"{path}/adapter_config.json is not a valid LoRA config: {error}") from error
    config.inference_mode = True
    return config


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from peft.utils import load_peft_weights

    if not any((path / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
        raise AdapterCorrupt(f"{path} has no adapter_model.safetensors")
    try:
        weights: dict[str, torch.Tensor] = load_peft_weights(str(path), device="cpu")
    except Exception as error:  # safetensors raises its own error types for truncated or garbled files
        raise AdapterCorrupt(f"cannot read the weights in {path}: {error}") from error
    return weights


def _drop_base_copies(name: str, weights: dict[str, torch.Tensor], base: BaseModelInfo) -> None:
    """peft saves the whole embedding matrix with adapters that target embeddings (`base_layer` weights).
    Loading it would overwrite the base model every tenant shares: an unchanged copy is dropped, a changed
    one (resized or retrained vocabulary) refused."""
    for key in [k for k in weights if ".base_layer." in k]:
        relative = key.removeprefix(_PEFT_PREFIX).replace(".base_layer.", ".")
        ours, theirs = base.params.get(relative), weights.pop(key)
        same = (
            ours is not None
            and tuple(ours.shape) == tuple(theirs.shape)
            and torch.allclose(ours.detach().float().cpu(), theirs.float(), rtol=1e-2, atol=1e-3)
        )
        if not same:
            raise IncompatibleBaseModel(
                f"adapter '{name}' carries its own {relative} (a resized or retrained vocabulary?); it cannot "
                "share a base model with other adapters: serve it merged, on its own engine"
            )


def _check_shapes(name: str, weights: dict[str, torch.Tensor], base: BaseModelInfo) -> None:
    """Every weight must sit on a module of the base model, with the shapes that module needs."""
    for key, tensor in weights.items():
        relative = key.removeprefix(_PEFT_PREFIX)
        shape = tuple(tensor.shape)
        if ".lora_" not in relative:  # modules_to_save / trainable tokens: a full copy of a base parameter
            param = base.params.get(relative)
            expected = tuple(param.shape) if param is not None else None
            if expected is None:
                raise IncompatibleBaseModel(f"adapter '{name}' has weight {relative}, which the base model lacks")
            if expected != shape:
                raise IncompatibleBaseModel(
                    f"adapter '{name}' has {relative} of shape {list(shape)}; the base model's is {list(expected)}"
                )
            continue
        module, _, part = relative.partition(".lora_")
        if module not in base.linear_shapes:
            raise IncompatibleBaseModel(
                f"adapter '{name}' targets module {module}, which the base model ({base.architecture}) does not have"
            )
        fan_in, fan_out = base.linear_shapes[module]
        # the shape each part must have: A [r, in], B [out, r], DoRA's magnitude [out]
        expected_dims = {
            "A.weight": (2, 1, fan_in),
            "B.weight": (2, 0, fan_out),
            "embedding_A": (2, 1, fan_in),
            "embedding_B": (2, 0, fan_out),
            "magnitude_vector": (1, 0, fan_out),
        }.get(part)
        if expected_dims is not None and (
            len(shape) != expected_dims[0] or shape[expected_dims[1]] != expected_dims[2]
        ):
            raise IncompatibleBaseModel(
                f"adapter '{name}' has {relative} of shape {list(shape)}, which does not fit {module} "
                f"(in {fan_in}, out {fan_out}): it was trained on a different base model"
            )
