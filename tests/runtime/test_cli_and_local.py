"""The `peft-runtime` entrypoint and local mode (`peft-runtime local train -f job.yaml`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.runtime.builders import chat_rows, instruction_rows, write_jsonl

ROOT = Path(__file__).resolve().parents[2]


def test_runtime_package_and_train_entrypoint_import_with_kopf_blocked() -> None:
    code = (
        "import sys\n"
        "for blocked in ('kopf', 'kubernetes'): sys.modules[blocked] = None\n"
        "import peft_runtime, peft_runtime.cli, peft_runtime.train.cli, peft_runtime.train.run\n"
        "import peft_runtime.train.trainer, peft_runtime.local, peft_runtime.models\n"
        "parser = peft_runtime.cli.build_parser()\n"
        "print(sorted(parser._subparsers._group_actions[0].choices))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr
    assert "'train'" in result.stdout and "'local'" in result.stdout


def test_peft_operator_local_points_to_the_runtime_command_and_exits_2() -> None:
    command = [sys.executable, "-m", "peft_operator.cli", "local", "train", "-f", "job.yaml"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        == "peft-operator local moved to the runtime: run `peft-runtime local train -f job.yaml` instead"
    )


def test_train_subcommand_exits_3_on_an_invalid_plan(tmp_path: Path, capsys: Any) -> None:
    from peft_runtime.cli import main

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"job": {"name": "x"}, "spec": {"method": {"type": "lora"}}}))
    assert main(["train", "--plan", str(plan)]) == 3
    assert "spec.baseModel: is required but missing" in capsys.readouterr().err


def _job_yaml(folder: Path, model_uri: str, **spec: Any) -> Path:
    body = {
        "apiVersion": "peft.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "colors-v1"},
        "spec": {
            "baseModel": {"uri": model_uri},
            "dataset": {"uri": "data/chat.jsonl", "format": "chat"},  # relative to the YAML file
            "method": {"type": "lora", "lora": {"r": 8}},
            "training": {"maxSteps": 12, "learningRate": "1e-2", "maxSeqLength": 64, "checkpointEvery": 6},
            "output": {"uri": "adapters/colors-v1"},
            **spec,
        },
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def test_local_mode_trains_a_finetunejob_yaml_with_relative_paths(
    tiny_model_dir: Path, tmp_path: Path, capsys: Any
) -> None:
    from peft_runtime.cli import main

    write_jsonl(tmp_path / "data" / "chat.jsonl", chat_rows(40))
    job = _job_yaml(tmp_path, str(tiny_model_dir))  # a plain absolute path works too
    assert main(["local", "train", "-f", str(job), "--work-dir", str(tmp_path / "work")]) == 0
    adapter = tmp_path / "adapters" / "colors-v1"
    manifest = json.loads((adapter / "manifest.json").read_text())
    assert manifest["baseModel"]["uri"] == tiny_model_dir.as_uri()
    captured = capsys.readouterr()
    assert f"Adapter colors-v1 written to {adapter}" in captured.err
    assert '"event":"completed"' in captured.out  # not a terminal: JSON lines instead of a bar


def test_ctrl_c_in_local_mode_checkpoints_and_says_how_to_resume(tiny_model_dir: Path, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data" / "chat.jsonl", chat_rows(40))
    training = {"maxSteps": 400, "learningRate": "1e-2", "maxSeqLength": 64, "checkpointEvery": 1000}
    job = _job_yaml(tmp_path, str(tiny_model_dir), training=training)
    command = [sys.executable, "-m", "peft_runtime.cli", "local", "train", "-f", str(job)]
    command += ["--work-dir", str(tmp_path / "work")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert first.stdout is not None
    for line in first.stdout:
        if '"event":"progress"' in line and json.loads(line)["progress"]["step"] >= 5:
            first.send_signal(signal.SIGINT)
            break
    _, stderr = first.communicate(timeout=60)
    assert first.returncode == 130, stderr[-2000:]
    assert "stopped by SIGINT at step" in stderr
    assert "Training colors-v1 stopped; the same command resumes it from its checkpoint" in stderr
    assert "failed" not in stderr
    step = int(stderr.split("stopped by SIGINT at step ")[1].split()[0])
    checkpoints = tmp_path / "adapters" / "colors-v1" / "checkpoints"
    assert [p.name for p in checkpoints.iterdir() if (p / "COMPLETE").is_file()] == [f"step-{step}"]


def _local_train(job: Path, *options: str, cpu_threads: str) -> subprocess.CompletedProcess[str]:
    """`peft-runtime local train -f job.yaml [options]` as a separate process, as a person runs it."""
    command = [sys.executable, "-m", "peft_runtime.cli", "local", "train", "-f", str(job), *options]
    env = {**os.environ, "PEFT_CPU_THREADS": cpu_threads}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_local_train_at_a_terminal_shows_what_it_does_the_dataset_and_a_progress_bar(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """What a person sees with `--output bar` (the default on a terminal), through the real CLI."""
    rows = chat_rows(40)
    rows[5] = rows[0]  # one duplicate: its warning must reach the terminal, not only manifest.json
    write_jsonl(tmp_path / "data" / "chat.jsonl", rows)
    job = _job_yaml(tmp_path, str(tiny_model_dir))
    done = _local_train(job, "--work-dir", str(tmp_path / "work"), "--output", "bar", cpu_threads="1")

    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == ""  # no JSON lines under a bar
    lines = done.stderr.replace("\r", "\n").splitlines()
    assert "Training colors-v1: importing torch, transformers and peft" in lines
    assert "Training on CPU with 1 threads ($PEFT_CPU_THREADS sets them)" in lines
    assert "Dataset: 40 rows, 40 usable," in done.stderr and ", 1 duplicate, " in done.stderr
    assert any(line.startswith("  warning: 1 exact duplicate row (kept") for line in lines)
    assert any(line.startswith("Trainable parameters: 3,584 of ") for line in lines)
    assert any("12/12" in line and "loss=" in line and "tok/s=" in line for line in lines)
    assert "kernels" not in done.stderr  # bitsandbytes' optional-kernels warning is noise on every run


def test_a_cpu_thread_count_that_is_not_a_number_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "data" / "chat.jsonl", chat_rows(20))
    done = _local_train(_job_yaml(tmp_path, str(tiny_model_dir)), "--output", "json", cpu_threads="two")
    assert done.returncode == 3
    failed = json.loads(done.stdout.splitlines()[-1])
    assert failed["reason"] == "ConfigurationError"
    assert failed["message"] == "PEFT_CPU_THREADS='two' is not a positive whole number of threads"


def test_local_mode_refuses_an_invalid_job_with_the_field_and_the_fix(tmp_path: Path, capsys: Any) -> None:
    from peft_runtime.local import train_local

    job = _job_yaml(tmp_path, "file:///models/none", method={"type": "lora", "lora": {"r": -4}})
    with pytest.raises(SystemExit) as exit_info:
        train_local(job)
    assert exit_info.value.code == 3
    assert "spec.method.lora.r: input should be greater than or equal to 1 (got -4)" in capsys.readouterr().err


def test_merged_lora_export_gives_the_adapter_s_logits(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from peft_runtime.adapters import load_adapter
    from peft_runtime.local import train_local

    write_jsonl(tmp_path / "data" / "chat.jsonl", chat_rows(40))
    adapter = train_local(_job_yaml(tmp_path, tiny_model_dir.as_uri()), tmp_path / "work", merge=True)
    merged = AutoModelForCausalLM.from_pretrained(adapter / "merged")
    with_adapter = load_adapter(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter)
    input_ids = torch.randint(0, 700, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = with_adapter(input_ids=input_ids).logits
        assert torch.allclose(merged(input_ids=input_ids).logits, expected, atol=1e-4)
    manifest = json.loads((adapter / "manifest.json").read_text())
    assert not any(name.startswith("merged") for name in manifest["files"])


@pytest.mark.parametrize(
    "method",
    [{"type": "ia3"}, {"type": "qlora", "qlora": {"r": 8, "quantization": {"bits": 4}}}],
    ids=lambda m: m["type"],
)
def test_output_merged_writes_a_full_model_with_the_adapter_s_logits(
    method: dict[str, Any], tiny_model_dir: Path, tmp_path: Path
) -> None:
    """`output.merged: true` in the FineTuneJob: ia3 folds its scaling vectors in, qlora its LoRA weights into
    the de-quantized (full-precision) base; the status record names the merged model."""
    import torch
    from transformers import AutoModelForCausalLM

    from peft_operator.api.plan import TrainingPlan
    from peft_runtime.adapters import load_adapter
    from tests.runtime.builders import make_plan, run_training

    wire = make_plan(
        model_dir=tiny_model_dir,
        dataset_uri=write_jsonl(tmp_path / "chat.jsonl", chat_rows(40)).as_uri(),
        output_uri=(tmp_path / "out").as_uri(),
        work_dir=tmp_path / "work",
        method=method,
        training={"maxSteps": 4, "learningRate": "5e-2"},
    ).to_wire()
    wire["spec"]["output"]["merged"] = True
    run = run_training(TrainingPlan.model_validate(wire))

    assert run.exit_code == 0, run.events[-1]
    assert run.of("completed")[0]["adapter"]["mergedUri"] == (tmp_path / "out").as_uri() + "/merged"
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "merged")
    with_adapter = load_adapter(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "out")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    input_ids = torch.randint(0, 700, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = with_adapter(input_ids=input_ids).logits
        assert torch.allclose(merged(input_ids=input_ids).logits, expected, atol=1e-4)
        assert not torch.allclose(base(input_ids=input_ids).logits, expected, atol=1e-4)


def test_hf_dataset_uri_reads_a_hub_snapshot_from_the_local_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from peft_operator.api.plan import Mounts
    from peft_runtime.train.storage import dataset_files

    # The Hub cache layout huggingface_hub itself writes: offline, snapshot_download returns it.
    cache = tmp_path / "hub"
    repo = cache / "datasets--acme--colors"
    commit = "0" * 40
    write_jsonl(repo / "snapshots" / commit / "data" / "train.jsonl", instruction_rows(5))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    files = dataset_files("hf://acme/colors", Mounts(), tmp_path / "work")
    assert [f.name for f in files] == ["train.jsonl"]
    assert files[0].read_text().count("\n") == 5


def test_pvc_and_configmap_uris_are_read_from_their_mounts(tmp_path: Path) -> None:
    from peft_operator.api.plan import Mounts
    from peft_runtime.train.storage import dataset_files

    write_jsonl(tmp_path / "pvc" / "team-data" / "chat" / "a.jsonl", chat_rows(2))
    write_jsonl(tmp_path / "cm" / "small-set" / "rows", chat_rows(2))
    mounts = Mounts(pvc_root=str(tmp_path / "pvc"), configmap_root=str(tmp_path / "cm"))
    assert dataset_files("pvc://team-data/chat", mounts, tmp_path) == [
        tmp_path / "pvc" / "team-data" / "chat" / "a.jsonl"
    ]
    assert dataset_files("configmap://small-set/rows", mounts, tmp_path) == [tmp_path / "cm" / "small-set" / "rows"]


def test_a_base_model_read_from_a_local_copy_is_recorded_under_the_uri_the_job_named(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Local mode reads a shipped hf:// model from its cached copy; the manifest must still name the hf://
    URI, or an agent configured with that URI refuses the adapter."""
    from peft_operator.api.plan import TrainingPlan
    from tests.runtime.builders import make_plan, run_training

    named = "hf://example-org/tiny-llama"
    wire = make_plan(
        model_dir=tiny_model_dir,
        dataset_uri=write_jsonl(tmp_path / "chat.jsonl", chat_rows(40)).as_uri(),
        output_uri=(tmp_path / "out").as_uri(),
        work_dir=tmp_path / "work",
        training={"maxSteps": 2},
    ).to_wire()
    wire["spec"]["baseModel"]["uri"] = named
    wire["mounts"] = {"localModels": {named: str(tiny_model_dir)}}
    run = run_training(TrainingPlan.model_validate(wire))

    assert run.exit_code == 0, run.events[-1]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["baseModel"]["uri"] == named
    assert run.of("completed")[0]["adapter"]["baseModel"] == named
