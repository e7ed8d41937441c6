"""Every PEFT method trains the tiny model through the same trainer, saves, and reloads exactly."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from tests.runtime.builders import Run, chat_rows, make_plan, run_training, write_jsonl

# Each method with a learning rate that moves it visibly in 24 steps on a random tiny model.
METHODS: dict[str, tuple[dict[str, Any], str]] = {
    "lora": ({"type": "lora", "lora": {"r": 8, "alpha": 16}}, "1e-2"),
    "dora": ({"type": "dora", "dora": {"r": 8, "alpha": 16}}, "1e-2"),
    "qlora": ({"type": "qlora", "qlora": {"r": 8, "alpha": 16, "quantization": {"bits": 4}}}, "1e-2"),
    "ia3": ({"type": "ia3"}, "1e-1"),
    "prefix": ({"type": "prefix", "prefix": {"numVirtualTokens": 8}}, "3e-2"),
    "prompt": ({"type": "prompt", "prompt": {"numVirtualTokens": 8}}, "3e-1"),
    "adapter": ({"type": "adapter", "adapter": {"reductionFactor": 8, "placement": ["attention", "mlp"]}}, "1e-2"),
}


class Trained:
    def __init__(self, method: dict[str, Any], output: Path, run: Run):
        self.method, self.output, self.run = method, output, run


@pytest.fixture(scope="module", params=sorted(METHODS))
def trained(request: pytest.FixtureRequest, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    method, learning_rate = METHODS[request.param]
    root = tmp_path_factory.mktemp(request.param)
    data = write_jsonl(root / "chat.jsonl", chat_rows(160))
    plan = make_plan(
        model_dir=tiny_model_dir,
        dataset_uri=data.as_uri(),
        output_uri=(root / "out").as_uri(),
        work_dir=root / "work",
        method=method,
        training={"maxSteps": 24, "learningRate": learning_rate, "checkpointEvery": 12},
    )
    return Trained(method, root / "out", run_training(plan))


def test_every_method_trains_the_tiny_model_and_lowers_the_loss(trained: Trained) -> None:
    run = trained.run
    assert run.exit_code == 0, run.events[-1]
    assert run.steps == list(range(1, 25))
    first, last = run.losses[0], run.losses[-1]
    assert last < first - 0.5, f"loss went from {first} to {last}"
    completed = run.of("completed")[0]
    assert completed["progress"]["evalLoss"] < first


def _logits(model: Any, input_ids: Any) -> Any:
    import torch

    model.eval()
    with torch.no_grad():
        return model(input_ids=input_ids, use_cache=False).logits


def _fresh_model(model_dir: Path, method: dict[str, Any], with_adapter: bool) -> Any:
    import torch

    from peft_operator.api.methods import Method
    from peft_runtime.train.methods import MethodContext, attach_adapter, load_base_model, method_setup

    setup = method_setup(Method.model_validate(method), MethodContext(model_dir, torch.device("cpu")))
    base = load_base_model(model_dir, setup, torch.float32, torch.device("cpu"))
    return attach_adapter(base, setup) if with_adapter else base


def test_every_method_saves_an_adapter_that_reloads_with_the_trained_logits(
    trained: Trained, tiny_model_dir: Path
) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from peft_runtime.adapters import load_adapter

    assert (trained.output / "adapter_config.json").is_file()
    assert (trained.output / "adapter_model.safetensors").is_file()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = tokenizer.apply_chat_template(chat_rows(2, seed=7)[0]["messages"], tokenize=False)
    input_ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])

    # The model as it was at the last step: fresh adapter + the final checkpoint's trained weights.
    as_trained = _fresh_model(tiny_model_dir, trained.method, with_adapter=True)
    weights = load_file(str(trained.output / "checkpoints" / "step-24" / "adapter_weights.safetensors"))
    parameters = dict(as_trained.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            parameters[name].copy_(tensor)
    reloaded = load_adapter(_fresh_model(tiny_model_dir, trained.method, with_adapter=False), trained.output)
    base = _fresh_model(tiny_model_dir, trained.method, with_adapter=False)

    expected = _logits(as_trained, input_ids)
    assert torch.allclose(_logits(reloaded, input_ids), expected, atol=1e-5, rtol=0)
    assert not torch.allclose(_logits(base, input_ids)[:, -input_ids.shape[1] :], expected[:, -input_ids.shape[1] :])


def test_manifest_pins_every_adapter_file_and_its_digest_is_reported(trained: Trained) -> None:
    manifest_bytes = (trained.output / "manifest.json").read_bytes()
    manifest = json.loads(manifest_bytes)
    completed = trained.run.of("completed")[0]["adapter"]
    assert completed["sha256"] == hashlib.sha256(manifest_bytes).hexdigest()
    top_level = {p.name for p in trained.output.iterdir() if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == top_level
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((trained.output / name).read_bytes()).hexdigest() == digest
    assert manifest["method"] == trained.method["type"]
    assert manifest["baseModel"]["architecture"] == "LlamaForCausalLM"
    assert manifest["baseModel"]["hiddenSize"] == 64
    assert manifest["dataset"]["usableRows"] == 160
    assert manifest["metrics"]["steps"] == 24
    assert {"torch", "transformers", "peft"} <= set(manifest["versions"])
    if trained.method["type"] in ("lora", "dora", "qlora"):
        assert manifest["rank"] == completed["rank"] == 8
        assert manifest["targetModules"] == ["q_proj", "v_proj"]
    assert completed["sizeBytes"] == sum(p.stat().st_size for p in trained.output.iterdir() if p.is_file())


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ({"type": "houlsby"}, "type"),
        ({"type": "lora", "ia3": {}}, "exactly one method"),
        ({"type": "lora", "lora": {"r": 8}, "dora": {"r": 8}}, "exactly one method"),
        ({"type": "qlora"}, "qlora.quantization"),
    ],
)
def test_unknown_or_combined_methods_are_rejected_before_training(
    method: dict[str, Any], expected: str, tmp_path: Path
) -> None:
    from peft_runtime.train.run import load_plan

    plan = {
        "job": {"name": "bad"},
        "spec": {
            "baseModel": {"uri": "file:///models/tiny"},
            "dataset": {"uri": "file:///data/chat.jsonl", "format": "chat"},
            "method": method,
            "output": {"uri": "file:///out"},
        },
    }
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    assert load_plan(path) is None  # the message goes to stderr; the CLI exits 3
