"""DPO (`training.objective: dpo`, `dataset.format: preference`) on the tiny model: the preflight checks the
pairs, training raises the chosen-over-rejected margin on held-out pairs compared with the base model, and
the reference policy (every method's adapter disabled) is exactly the base model."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.runtime.builders import make_plan, run_training, write_jsonl
from tests.runtime.test_methods import METHODS

SUBJECTS = ["cat", "dog", "sun", "tree", "road", "ship", "bird", "king", "rain", "town", "fish", "door"]


def preference_rows(count: int, seed: int) -> list[dict[str, str]]:
    """The chosen answer repeats the subject politely; the rejected one names another subject rudely."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        subject, other = rng.sample(SUBJECTS, 2)
        rows.append(
            {
                "prompt": f"Tell me about the {subject} ({index}).",
                "chosen": f" The {subject} is good, thank you.",
                "rejected": f" No. The {other} was bad.",
            }
        )
    return rows


def _answer_log_prob(model: Any, tokenizer: Any, prompt: str, answer: str) -> float:
    """log p(answer + EOS | prompt), computed directly from the model's logits (not the trainer's code)."""
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
    positions = range(len(prompt_ids) - 1, ids.shape[1] - 1)
    return float(sum(log_probs[p, ids[0, p + 1]] for p in positions))


def _margins(model: Any, tokenizer: Any, rows: list[dict[str, str]]) -> list[float]:
    return [
        _answer_log_prob(model, tokenizer, r["prompt"], r["chosen"])
        - _answer_log_prob(model, tokenizer, r["prompt"], r["rejected"])
        for r in rows
    ]


def test_dpo_raises_the_chosen_over_rejected_margin_on_held_out_pairs(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from peft_runtime.adapters import load_adapter

    data = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(96, seed=1))
    plan = make_plan(
        model_dir=tiny_model_dir,
        dataset_uri=data.as_uri(),
        output_uri=(tmp_path / "out").as_uri(),
        work_dir=tmp_path / "work",
        method={
            "type": "lora",
            "lora": {"r": 8, "alpha": 16, "targetModules": ["q_proj", "v_proj", "o_proj", "down_proj"]},
        },
        data_format="preference",
        training={
            "objective": "dpo",
            "dpo": {"beta": "0.1"},
            "maxSteps": 30,
            "learningRate": "1e-2",
            "checkpointEvery": 15,
        },
    )
    run = run_training(plan)
    assert run.exit_code == 0, run.events[-1]
    assert run.events[0]["dataset"]["usableRows"] == 96
    first, last = run.of("progress")[0]["progress"], run.of("progress")[-1]["progress"]
    assert first["loss"] == pytest.approx(0.6931, abs=0.02), "step 1: the adapter starts as the base, loss log 2"
    assert last["loss"] < first["loss"]
    assert last["rewardAccuracy"] >= 0.8 and last["rewardMargin"] > 0, last
    manifest_metrics = run.of("completed")[0]["adapter"]
    assert manifest_metrics["method"] == "lora"

    held_out = preference_rows(40, seed=2)  # prompts and subject pairs the run never saw
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    before = _margins(base, tokenizer, held_out)
    trained = load_adapter(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "out").eval()
    after = _margins(trained, tokenizer, held_out)
    mean_before, mean_after = sum(before) / len(before), sum(after) / len(after)
    accuracy_before = sum(m > 0 for m in before) / len(before)
    accuracy_after = sum(m > 0 for m in after) / len(after)
    print(
        f"held-out margin {mean_before:.3f} -> {mean_after:.3f}, accuracy {accuracy_before:.2f} -> {accuracy_after:.2f}"
    )
    assert mean_after > mean_before + 1.0
    assert accuracy_after >= 0.9 and accuracy_after > accuracy_before


def test_the_preflight_names_pairs_that_cannot_teach_a_preference(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from peft_operator.api.finetunejob import DatasetFormat
    from peft_runtime.train.data import IGNORE, prepare_dataset

    chat_prompt = [{"role": "user", "content": "Hi?"}]
    rows = [
        {"prompt": "Q1:", "chosen": " yes", "rejected": " no"},
        {"prompt": "Q2:", "chosen": " yes"},
        {"prompt": "Q3:", "chosen": " same", "rejected": " same"},
        {"prompt": "Q4:", "chosen": "  ", "rejected": " no"},
        {"prompt": "Q5:", "chosen": " yes", "rejected": [{"role": "assistant", "content": "no"}]},
        {
            "prompt": chat_prompt,
            "chosen": [{"role": "assistant", "content": "Hello there."}],
            "rejected": [{"role": "assistant", "content": "Go away."}],
        },
    ]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prepared = prepare_dataset([path], DatasetFormat.PREFERENCE, tokenizer, 64)
    assert prepared.format_problem is None
    assert prepared.report.rows == 6 and prepared.report.usable_rows == 2
    warnings = " ".join(prepared.report.warnings)
    assert "pairs.jsonl line 2: 'rejected' is missing" in warnings
    assert "pairs.jsonl line 3: chosen and rejected are the same answer: nothing to prefer" in warnings
    assert "1 empty row skipped: pairs.jsonl line 4" in warnings
    assert "pairs.jsonl line 5: prompt, chosen and rejected must all be strings, or all be lists" in warnings

    chat = prepared.examples[1]
    assert chat.rejected is not None
    # Scored on the answer turn only: the user's prompt has no targets.
    answer = tokenizer.decode([t for t in chat.targets if t != IGNORE])
    assert answer.startswith("Hello there.") and "Hi?" not in answer
    assert tokenizer.decode([t for t in chat.rejected.targets if t != IGNORE]).startswith("Go away.")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_methods_disabled_adapter_is_exactly_the_base_model(name: str, tiny_model_dir: Path) -> None:
    """DPO's reference policy is the model with its adapter disabled: for each method, once the adapter
    has weights that change the output, disabling it must give the base model's logits again."""
    from peft_operator.api.methods import Method
    from peft_runtime.train.methods import MethodContext, attach_adapter, load_base_model, method_setup

    setup = method_setup(Method.model_validate(METHODS[name][0]), MethodContext(tiny_model_dir, torch.device("cpu")))
    ids = torch.arange(1, 17)[None]

    def base_model() -> Any:  # as the method loads it: qlora's reference is the 4-bit base
        return load_base_model(tiny_model_dir, setup, torch.float32, torch.device("cpu")).eval()

    with torch.no_grad():
        base_logits = base_model()(input_ids=ids).logits
    model = attach_adapter(base_model(), setup).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.5)
        adapted = model(input_ids=ids).logits[:, -16:]
        with model.disable_adapter():
            reference = model(input_ids=ids).logits
    assert not torch.allclose(adapted, base_logits, atol=1e-3), "the adapter changes the output"
    assert torch.allclose(reference, base_logits, atol=1e-4), (reference - base_logits).abs().max()


@pytest.mark.parametrize("name", ["adapter", "prefix", "prompt", "qlora"])
def test_dpo_trains_with_the_methods_whose_reference_takes_another_path(
    name: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Prompt tuning's reference has no soft tokens in front of the input, prefix tuning's no key/value
    prefix, the bottleneck adapter is our own module, and qlora's reference is the 4-bit base."""
    method, learning_rate = METHODS[name]
    plan = make_plan(
        model_dir=tiny_model_dir,
        dataset_uri=write_jsonl(tmp_path / "pairs.jsonl", preference_rows(32, seed=3)).as_uri(),
        output_uri=(tmp_path / "out").as_uri(),
        work_dir=tmp_path / "work",
        method=method,
        data_format="preference",
        training={"objective": "dpo", "maxSteps": 4, "learningRate": learning_rate, "checkpointEvery": 4},
    )
    run = run_training(plan)
    assert run.exit_code == 0, run.events[-1]
    final = run.of("completed")[0]["progress"]
    assert final["evalRows"] == 3 and final["rewardAccuracy"] is not None and final["rewardMargin"] is not None
