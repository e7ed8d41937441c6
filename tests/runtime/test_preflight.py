"""Preflight: every problem class in the data is reported with row numbers before training starts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from peft_operator.api.finetunejob import Strategy
from tests.runtime.builders import chat_rows, instruction_rows, make_plan, run_training, text_rows, write_jsonl


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _prepare(path: Path, data_format: str, tokenizer: Any, max_seq_length: int = 64) -> Any:
    from peft_operator.api.finetunejob import DatasetFormat
    from peft_runtime.train.data import prepare_dataset

    return prepare_dataset([path], DatasetFormat(data_format), tokenizer, max_seq_length)


def _warning(report: Any, starts: str) -> str:
    found = [w for w in report.warnings if starts in w]
    assert found, f"no warning with {starts!r} in {report.warnings}"
    return found[0]


def test_preflight_names_each_problem_with_its_row_number(tmp_path: Path, tokenizer: Any) -> None:
    good = instruction_rows(20)
    lines = [json.dumps(r) for r in good]
    lines[2] = ""  # line 3: empty
    lines[4] = '{"prompt": "Color of the sky:", "completion": '  # line 5: malformed JSON
    lines[6] = json.dumps({"prompt": "no completion here"})  # line 7: missing field
    lines[8] = json.dumps({"prompt": "x", "completion": 42})  # line 9: wrong type
    lines[10] = json.dumps({"prompt": "Color:", "completion": "   "})  # line 11: empty completion
    lines[12] = lines[0]  # line 13: exact duplicate of line 1
    lines[14] = json.dumps({"prompt": "Color of the fox:", "completion": " orange" + " and orange" * 40})  # truncated
    lines[16] = json.dumps({"prompt": "sky " * 80, "completion": " blue"})  # line 17: answer beyond the limit
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")

    prepared = _prepare(path, "instruction", tokenizer, max_seq_length=48)
    report = prepared.report

    assert report.rows == 20
    assert report.duplicates == 1
    assert report.usable_rows == 20 - 6  # empty x2, malformed x3, nothing-to-learn x1
    assert len(prepared.examples) == report.usable_rows
    assert report.tokens == sum(len(e) for e in prepared.examples)
    assert report.truncated_fraction == pytest.approx(2 / 15, abs=1e-3)
    malformed = _warning(report, "malformed rows")
    assert "1 exact duplicate row (kept" in _warning(report, "exact duplicate")
    assert malformed.startswith("3 malformed rows")
    assert "data.jsonl line 5: invalid JSON" in malformed
    assert "data.jsonl line 7: 'completion' is missing" in malformed
    assert "data.jsonl line 9: 'completion' must be a string" in malformed
    assert "data.jsonl line 3" in _warning(report, "empty rows") and "line 11" in _warning(report, "empty rows")
    assert "data.jsonl line 13 repeats data.jsonl line 1" in _warning(report, "exact duplicate")
    truncated = _warning(report, "longer than maxSeqLength 48")
    assert "data.jsonl line 15" in truncated and "data.jsonl line 17" in truncated
    assert "data.jsonl line 17" in _warning(report, "no answer tokens left")
    assert "under 500" in _warning(report, "overfit")


def test_five_hundred_examples_or_more_raise_no_overfitting_warning(tmp_path: Path, tokenizer: Any) -> None:
    report = _prepare(write_jsonl(tmp_path / "t.jsonl", text_rows(500)), "text", tokenizer).report
    assert report.usable_rows == 500
    assert report.warnings == []


def test_zero_usable_rows_fail_with_dataset_invalid_and_say_why(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"messages": []}\nnot json\n{"messages": "not a list"}\n')
    plan = make_plan(
        model_dir=tiny_model_dir, dataset_uri=path.as_uri(), output_uri=(tmp_path / "o").as_uri(), work_dir=tmp_path
    )
    run = run_training(plan)
    assert run.exit_code == 3  # permanent: retrying the same data cannot help
    assert [e["event"] for e in run.events] == ["preflight", "failed"]
    assert run.events[0]["dataset"]["rows"] == 3 and run.events[0]["dataset"]["usableRows"] == 0
    failed = run.events[1]
    assert failed["reason"] == "DatasetInvalid"
    assert failed["message"].startswith("none of the 3 rows can be trained on")
    assert "bad.jsonl line 2: invalid JSON" in failed["message"]
    assert "bad.jsonl line 3: 'messages' must be a list" in failed["message"]
    assert "bad.jsonl line 1" in failed["message"]  # no assistant turn: empty
    assert not (tmp_path / "o" / "checkpoints").exists()


def test_a_missing_dataset_fails_with_dataset_invalid(tiny_model_dir: Path, tmp_path: Path) -> None:
    plan = make_plan(
        model_dir=tiny_model_dir,
        dataset_uri=(tmp_path / "nope.jsonl").as_uri(),
        output_uri=(tmp_path / "o").as_uri(),
        work_dir=tmp_path,
    )
    run = run_training(plan)
    assert run.exit_code == 3
    assert run.of("failed")[0]["reason"] == "DatasetInvalid"
    assert "does not exist" in run.of("failed")[0]["message"]


def test_parquet_rows_are_read_and_numbered(tmp_path: Path, tokenizer: Any) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = text_rows(10)
    rows[3] = {"text": ""}
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    report = _prepare(tmp_path / "t.parquet", "text", tokenizer).report
    assert (report.rows, report.usable_rows) == (10, 9)
    assert "1 empty row skipped: t.parquet row 4" in _warning(report, "empty row")


def _decoded_targets(tokenizer: Any, example: Any) -> str:
    return tokenizer.decode([t for t in example.targets if t != -100])


def test_chat_rows_train_only_on_assistant_turns(tmp_path: Path, tokenizer: Any) -> None:
    row = {
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What color is the sky?"},
            {"role": "assistant", "content": "The sky is blue."},
            {"role": "user", "content": "And the grass?"},
            {"role": "assistant", "content": "The grass is green."},
        ]
    }
    prepared = _prepare(write_jsonl(tmp_path / "c.jsonl", [row]), "chat", tokenizer, max_seq_length=256)
    (example,) = prepared.examples
    assert _decoded_targets(tokenizer, example) == "The sky is blue.<|im_end|>\nThe grass is green.<|im_end|>\n"
    assert tokenizer.decode(example.input_ids) == tokenizer.apply_chat_template(row["messages"], tokenize=False)
    # targets are the next tokens: wherever there is one, it is the following input token
    for position, target in enumerate(example.targets[:-1]):
        assert target in (-100, example.input_ids[position + 1])


def test_instruction_rows_train_only_on_the_completion(tmp_path: Path, tokenizer: Any) -> None:
    row = {"prompt": "Color of the sky:", "completion": " blue"}
    (example,) = _prepare(write_jsonl(tmp_path / "i.jsonl", [row]), "instruction", tokenizer).examples
    assert _decoded_targets(tokenizer, example) == " blue<|im_end|>"
    assert tokenizer.decode(example.input_ids) == "Color of the sky: blue<|im_end|>"


def test_text_rows_train_on_every_token(tmp_path: Path, tokenizer: Any) -> None:
    (example,) = _prepare(write_jsonl(tmp_path / "t.jsonl", [{"text": "The sky is blue."}]), "text", tokenizer).examples
    assert example.targets[:-1] == example.input_ids[1:]
    assert example.targets[-1] == -100


def test_every_format_trains(tiny_model_dir: Path, tmp_path: Path) -> None:
    for data_format, rows in (("chat", chat_rows(40)), ("instruction", instruction_rows(40)), ("text", text_rows(40))):
        data = write_jsonl(tmp_path / f"{data_format}.jsonl", rows)
        plan = make_plan(
            model_dir=tiny_model_dir,
            dataset_uri=data.as_uri(),
            output_uri=(tmp_path / f"out-{data_format}").as_uri(),
            work_dir=tmp_path / data_format,
            data_format=data_format,
            training={"maxSteps": 8},
        )
        run = run_training(plan)
        assert run.exit_code == 0, run.events[-1]
        assert run.losses[-1] < run.losses[0]


def test_a_dataset_mixing_formats_is_refused_with_the_lines_of_each_kind(tiny_model_dir: Path, tmp_path: Path) -> None:
    rows = chat_rows(6) + instruction_rows(2) + chat_rows(2, seed=1) + text_rows(1)
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    plan = make_plan(
        model_dir=tiny_model_dir, dataset_uri=path.as_uri(), output_uri=(tmp_path / "o").as_uri(), work_dir=tmp_path
    )
    run = run_training(plan)

    assert run.exit_code == 3
    assert [e["event"] for e in run.events] == ["preflight", "failed"]  # the report still reaches the user
    message = run.of("failed")[0]["message"]
    assert message.startswith("the dataset mixes formats, and a job trains on one (dataset.format: chat)")
    assert "chat (8 rows): mixed.jsonl line 1; mixed.jsonl line 2" in message
    assert "instruction (2 rows): mixed.jsonl line 7; mixed.jsonl line 8" in message
    assert "text (1 row): mixed.jsonl line 11" in message
    assert not (tmp_path / "o" / "checkpoints").exists()


def test_rows_all_in_another_format_name_the_format_to_declare(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "instruction.jsonl", instruction_rows(12))
    plan = make_plan(
        model_dir=tiny_model_dir, dataset_uri=path.as_uri(), output_uri=(tmp_path / "o").as_uri(), work_dir=tmp_path
    )
    failed = run_training(plan).of("failed")[0]
    assert failed["reason"] == "DatasetInvalid"
    assert failed["message"] == (
        "dataset.format is chat, but the rows are in format instruction (prompt, completion); "
        "set dataset.format: instruction"
    )


@pytest.mark.parametrize(
    ("name", "content", "kind"),
    [
        ("rows.csv", "prompt,completion\nColor of the sky:,blue\n", "CSV"),
        ("rows.json", json.dumps(instruction_rows(3)), "a JSON array"),
    ],
)
def test_files_in_other_formats_are_refused_naming_the_supported_ones(
    tiny_model_dir: Path, tmp_path: Path, name: str, content: str, kind: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    plan = make_plan(
        model_dir=tiny_model_dir,
        dataset_uri=path.as_uri(),
        output_uri=(tmp_path / "o").as_uri(),
        work_dir=tmp_path,
        data_format="instruction",
    )
    failed = run_training(plan).of("failed")[0]
    assert failed["reason"] == "DatasetInvalid"
    assert failed["message"] == (
        f"{name}: {kind} is not supported; use JSON Lines (.jsonl, one JSON object per line) or Parquet (.parquet)"
    )


def test_the_preflight_step_checks_targets_on_the_meta_model_without_reading_weights(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """`peft-runtime preflight`: the model directory holds no weights at all, as the CPU step fetches none."""
    no_weights = tmp_path / "model"
    shutil.copytree(tiny_model_dir, no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    data = write_jsonl(tmp_path / "train.jsonl", instruction_rows(40))
    lora = {"type": "lora", "lora": {"r": 4, "targetModules": ["q_proj", "v_proj"]}}
    plan = make_plan(
        model_dir=no_weights,
        dataset_uri=data.as_uri(),
        output_uri=(tmp_path / "o").as_uri(),
        work_dir=tmp_path,
        method=lora,
        data_format="instruction",
    )
    passed = run_training(plan, preflight_only=True)
    assert passed.exit_code == 0
    assert [e["event"] for e in passed.events] == ["preflight", "preflightPassed"]
    assert passed.events[1]["dataset"]["usableRows"] == 40
    assert "lora wraps q_proj, v_proj" in passed.events[1]["message"]
    assert not (tmp_path / "o" / "checkpoints").exists(), "nothing trained"

    sharded = plan.model_copy(deep=True)
    sharded.spec.training.strategy = Strategy.FSDP
    sharded.spec.resources.gpus = 2
    fsdp = run_training(sharded, preflight_only=True)
    assert fsdp.exit_code == 0 and "fsdp shards its 2 transformer blocks" in fsdp.events[1]["message"]

    wrong = plan.model_copy(deep=True)
    wrong.spec.method.lora.target_modules = ["q_proj", "query_key_value"]  # type: ignore[union-attr]
    failed = run_training(wrong, preflight_only=True)
    assert failed.exit_code == 3
    assert failed.of("failed")[0]["reason"] == "ConfigurationError"
    message = failed.of("failed")[0]["message"]
    assert "query_key_value" in message
    assert "Its linear modules are: down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj" in message
