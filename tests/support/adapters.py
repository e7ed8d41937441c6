"""Test adapters made directly (no training) for every method the trainer produces, and LoHa, which it does
not: random, non-zero weights, so adapters really change the output, saved with a manifest.json as the
trainer writes it; plus the references served answers are compared with.

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
    "make_bottleneck_adapter",
    "make_ia3_adapter",
    "make_loha_adapter",
    "make_lora_adapter",
    "make_prefix_tuning_adapter",
    "make_prompt_tuning_adapter",
    "reference_generate",
    "reference_generate_without_cache",
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


def make_prompt_tuning_adapter(model_dir: Path, out_dir: Path, *, seed: int = 0, tokens: int = 4) -> TestAdapter:
    """A prompt-tuning adapter with random soft-prompt embeddings (peft's RANDOM init)."""
    from peft import PromptTuningConfig, TaskType

    config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=tokens)
    return _make_peft_adapter(model_dir, out_dir, config, seed=seed, method="prompt")


def make_prefix_tuning_adapter(model_dir: Path, out_dir: Path, *, seed: int = 0, tokens: int = 4) -> TestAdapter:
    """A prefix-tuning adapter with random prefix keys and values (peft's init)."""
    from peft import PrefixTuningConfig, TaskType

    config = PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=tokens)
    return _make_peft_adapter(model_dir, out_dir, config, seed=seed, method="prefix")


def make_ia3_adapter(model_dir: Path, out_dir: Path, *, seed: int = 0) -> TestAdapter:
    """An IA3 adapter on peft's default modules (k_proj, v_proj, down_proj) with vectors far from 1."""
    from peft import IA3Config, TaskType

    return _make_peft_adapter(model_dir, out_dir, IA3Config(task_type=TaskType.CAUSAL_LM), seed=seed, method="ia3")


def _make_peft_adapter(model_dir: Path, out_dir: Path, config: Any, *, seed: int, method: str) -> TestAdapter:
    import torch
    from peft import get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_peft_model(_load_base(model_dir), config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if ".ia3_l." in name:
                    param.copy_(torch.rand_like(param) * 1.5 + 0.25)  # 0.25..1.75: changes the answers
    return _finish(model, out_dir, model_dir, method=method, rank=None, targets=[], uri=None, revision=None)


def make_loha_adapter(model_dir: Path, out_dir: Path, *, seed: int = 0) -> TestAdapter:
    """A LoHa adapter: a peft method the trainer never produces, which no engine here serves. Its manifest
    claims lora (as a hand-edited one could), so the refusal must come from the adapter's own config."""
    from peft import LoHaConfig

    config = LoHaConfig(r=4, target_modules=["q_proj", "v_proj"], init_weights=False)
    return _make_peft_adapter(model_dir, out_dir, config, seed=seed, method="lora")


def make_bottleneck_adapter(model_dir: Path, out_dir: Path, *, seed: int = 0) -> TestAdapter:
    """A bottleneck adapter (`method: adapter`) after attention and MLP, with random up-projections."""
    import torch

    from peft_runtime.bottleneck import BottleneckConfig, BottleneckModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = BottleneckConfig(reduction_factor=8, placement=["attention", "mlp"])
        model = BottleneckModel(_load_base(model_dir), config)
        with torch.no_grad():
            for name, param in model.adapters.named_parameters():
                if ".up." in name:
                    param.normal_(0.0, 0.3)
    return _finish(
        model, out_dir, model_dir, method="adapter", rank=None, targets=["attention", "mlp"], uri=None, revision=None
    )


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


def reference_generate_without_cache(
    model_dir: Path, adapter_dir: Path, prompts: list[str], max_new_tokens: int
) -> list[str]:
    """Greedy texts from the adapter applied as in training (peft_runtime.adapters.load_adapter), one prompt at a
    time, each token from a full forward pass over everything so far without a KV cache: the reference for
    methods whose peft `generate` is not (prefix and prompt tuning, see serving/virtual_tokens.py)."""
    import torch
    from transformers import AutoTokenizer

    from peft_runtime.adapters import load_adapter

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load_adapter(_load_base(model_dir), adapter_dir).eval()
    texts = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        start = ids.shape[1]
        with torch.inference_mode():
            for _ in range(max_new_tokens):
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
                token = logits[0, -1].argmax()
                if int(token) == tokenizer.eos_token_id:
                    break
                ids = torch.cat([ids, token.view(1, 1)], 1)
        texts.append(str(tokenizer.decode(ids[0, start:], skip_special_tokens=True)))
    return texts


def assert_same_adapter(expected_dir: Path, actual_dir: Path, relative_tolerance: float) -> None:
    """Two trained adapters hold the same tensors, each within `relative_tolerance` of its largest value."""
    from safetensors.torch import load_file

    expected = load_file(str(expected_dir / "adapter_model.safetensors"))
    actual = load_file(str(actual_dir / "adapter_model.safetensors"))
    assert expected.keys() == actual.keys()
    for name, weight in expected.items():
        difference = (weight - actual[name]).abs().max().item()
        assert difference <= relative_tolerance * max(weight.abs().max().item(), 1e-3), (name, difference)
