"""Datasets, plans and runs for the trainer tests: small, deterministic, learnable."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft_operator.api.plan import TrainingPlan

COLORS = {"sky": "blue", "grass": "green", "sun": "yellow", "moon": "white", "fox": "orange", "bear": "black"}


def chat_rows(count: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        thing = rng.choice(sorted(COLORS))
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"What color is the {thing}? ({index})"},
                    {"role": "assistant", "content": f"The {thing} is {COLORS[thing]}."},
                ]
            }
        )
    return rows


def varied_chat_rows(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Chat rows of very different lengths (1 to 3 turns, short to long answers)."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        messages = []
        for _ in range(rng.randint(1, 3)):
            thing = rng.choice(sorted(COLORS))
            question = f"What color is the {thing}? " + " ".join(
                rng.choice(sorted(COLORS)) for _ in range(rng.randint(0, 30))
            )
            answer = f"The {thing} is {COLORS[thing]}." + f" The {thing} is {COLORS[thing]}." * rng.randint(0, 6)
            messages += [{"role": "user", "content": f"{question} ({index})"}, {"role": "assistant", "content": answer}]
        rows.append({"messages": messages})
    return rows


def instruction_rows(count: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        thing = rng.choice(sorted(COLORS))
        rows.append({"prompt": f"Color of the {thing} ({index}):", "completion": f" {COLORS[thing]}"})
    return rows


def text_rows(count: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {"text": f"The {t} is {COLORS[t]}. ({i})"}
        for i, t in enumerate(rng.choice(sorted(COLORS)) for _ in range(count))
    ]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def make_plan(
    *,
    model_dir: Path,
    dataset_uri: str,
    output_uri: str,
    work_dir: Path,
    method: dict[str, Any] | None = None,
    data_format: str = "chat",
    training: dict[str, Any] | None = None,
    progress: dict[str, Any] | None = None,
    validation_split: float = 0.1,
) -> TrainingPlan:
    hyperparameters = {
        "maxSteps": 20,
        "learningRate": "1e-2",
        "batchSize": 8,
        "maxSeqLength": 64,
        "checkpointEvery": 10,
    }
    hyperparameters.update(training or {})
    return TrainingPlan.model_validate(
        {
            "job": {"name": "test-job"},
            "spec": {
                "baseModel": {"uri": model_dir.as_uri()},
                "dataset": {"uri": dataset_uri, "format": data_format, "validationSplit": validation_split},
                "method": method or {"type": "lora", "lora": {"r": 8}},
                "training": hyperparameters,
                "output": {"uri": output_uri},
            },
            "progress": {"file": str(work_dir / "events.jsonl"), **(progress or {})},
            "workDir": str(work_dir),
        }
    )


@dataclass
class Run:
    exit_code: int
    events: list[dict[str, Any]] = field(default_factory=list)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == kind]

    @property
    def steps(self) -> list[int]:
        return [e["progress"]["step"] for e in self.of("progress")]

    @property
    def losses(self) -> list[float]:
        return [e["progress"]["loss"] for e in self.of("progress")]


def read_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def run_training(plan: TrainingPlan, **kwargs: Any) -> Run:
    """Run the trainer in this process (torch is imported once per session); events from the file sink."""
    from peft_runtime.train.run import run_plan

    assert plan.progress.file is not None
    events_file = Path(plan.progress.file)
    events_file.unlink(missing_ok=True)
    code = run_plan(plan, stdout=False, **kwargs)
    return Run(code, read_events(events_file))


def without_dropout(method: dict[str, Any]) -> dict[str, Any]:
    """`method` with its adapter dropout off, for runs that must agree step by step (dropout masks drawn in
    another order or by another process would make them agree only in distribution)."""
    if method["type"] in ("lora", "dora", "qlora"):
        return {**method, method["type"]: {**method.get(method["type"], {}), "dropout": 0.0}}
    return method
