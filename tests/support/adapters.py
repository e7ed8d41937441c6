"""Test adapters made directly with peft (no training): random, non-zero LoRA weights, so adapters really
change the output, saved with a manifest.json as the trainer writes it.

    adapter = make_lora_adapter(tiny_model_dir, tmp / "tenant-a", seed=1)
    adapter.path, adapter.sha256   # the directory, and the digest an AdapterDeployment would name
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft_operator.api.manifest import MANIFEST_FILE_NAME, AdapterManifest, ManifestBaseModel
from peft_runtime.digest import file_digests, sha256_file, write_manifest

__all__ = [
    "TestAdapter",
    "base_uri",
    "corrupt_weights",
    "make_lora_adapter",
    "make_prompt_tuning_adapter",
    "reference_generate",
    "retarget",
    "rewrite_manifest",
    "upload_dir",
]


@dataclass(frozen=True)
class TestAdapter:
    __test__ = False  # not a pytest test class

    path: Path
    sha256: str
    manifest: AdapterManifest


def base_uri(model_dir: Path) -> str:
    """The base-model URI the helpers write into manifests (what a local-mode trainer would record)."""
    return Path(model_dir).resolve().as_uri()


def _load_base(model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir)


def _finish(
    model: Any,
    out_dir: Path,
    model_dir: Path,
    *,
    method: str,
    rank: int | None,
    targets: list[str],
    uri: str | None,
    revision: str | None,
) -> TestAdapter:
    out_dir = Path(out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    model.save_pretrained(out_dir)
    config = model.get_base_model().config
    manifest = AdapterManifest(
        files=file_digests(out_dir),
        base_model=ManifestBaseModel(
            uri=uri or base_uri(model_dir),
            revision=revision,
            architecture=config.architectures[0] if config.architectures else None,
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
        ),
        method=method,
        rank=rank,
        target_modules=targets,
        versions={"peft": __import__("peft").__version__},
    )
    return TestAdapter(out_dir, write_manifest(out_dir, manifest), manifest)


def make_lora_adapter(
    model_dir: Path,
    out_dir: Path,
    *,
    seed: int,
    r: int = 4,
    alpha: int = 16,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj"),
    use_dora: bool = False,
    modules_to_save: tuple[str, ...] | None = None,
    method: str | None = None,
    uri: str | None = None,
    revision: str | None = None,
) -> TestAdapter:
    """A LoRA (or DoRA) adapter with random A and B (peft's init_lora_weights=False), and its manifest.
    `modules_to_save` modules get a perturbed full copy, as if they had been trained."""
    import torch
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=list(target_modules),
        use_dora=use_dora,
        init_lora_weights=False,
        lora_dropout=0.0,
        modules_to_save=list(modules_to_save) if modules_to_save else None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_peft_model(_load_base(model_dir), config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if ".modules_to_save." in name:
                    param.add_(torch.randn_like(param) * 0.05)
    return _finish(
        model,
        out_dir,
        model_dir,
        method=method or ("dora" if use_dora else "lora"),
        rank=r,
        targets=list(target_modules),
        uri=uri,
        revision=revision,
    )


def make_prompt_tuning_adapter(model_dir: Path, out_dir: Path, *, seed: int = 0) -> TestAdapter:
    """A prompt-tuning adapter: a method the built-in engine refuses to hot-load."""
    import torch
    from peft import PromptTuningConfig, TaskType, get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_peft_model(
            _load_base(model_dir), PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4)
        )
    return _finish(model, out_dir, model_dir, method="prompt", rank=None, targets=[], uri=None, revision=None)


def rewrite_manifest(adapter_dir: Path, **changes: Any) -> str:
    """Re-digest the files and rewrite manifest.json with `changes` (e.g. method=..., rank=...); new sha256."""
    manifest = AdapterManifest.model_validate_json((adapter_dir / MANIFEST_FILE_NAME).read_text())
    manifest = manifest.model_copy(update={"files": file_digests(adapter_dir), **changes})
    return write_manifest(adapter_dir, manifest)


def corrupt_weights(adapter_dir: Path, *, keep_manifest_valid: bool) -> str:
    """Overwrite the safetensors file with garbage. With keep_manifest_valid, the manifest is re-digested so
    only the file's content is wrong (the engine's own reading must catch it); returns the manifest digest."""
    weights = adapter_dir / "adapter_model.safetensors"
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not safetensors" + bytes(range(256)))
    if keep_manifest_valid:
        return rewrite_manifest(adapter_dir)
    return sha256_file(adapter_dir / MANIFEST_FILE_NAME)


def retarget(adapter_dir: Path, old: str, new: str) -> str:
    """Rename the modules the weights sit on (e.g. q_proj -> wq, as another architecture names them) and
    re-digest: an adapter made for a different base model. Returns the new manifest digest."""
    from safetensors.torch import load_file, save_file

    weights = adapter_dir / "adapter_model.safetensors"
    tensors = load_file(weights)
    save_file({key.replace(f".{old}.", f".{new}."): value for key, value in tensors.items()}, weights)
    return rewrite_manifest(adapter_dir)


def upload_dir(client: Any, bucket: str, prefix: str, directory: Path) -> str:
    """Upload every file of `directory` under s3://bucket/prefix/; returns the s3:// URI."""
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(directory).as_posix()}")
    return f"s3://{bucket}/{prefix}"


def reference_generate(model_dir: Path, adapter_dir: Path | None, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy texts from peft's own single-adapter path (PeftModel.from_pretrained + generate, one prompt at a
    time): the reference the server's mixed batches must equal."""
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = _load_base(model_dir).eval()
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    texts = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        texts.append(str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)))
    return texts
