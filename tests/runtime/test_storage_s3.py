"""S3: datasets in, adapters and checkpoints out, against a real S3-compatible server on loopback."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from tests.runtime.builders import chat_rows, make_plan, run_training, write_jsonl


def _keys(client: Any, bucket: str, prefix: str = "") -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def test_s3_dataset_and_s3_output_work_against_a_real_s3_server(
    s3_server: Any, s3_bucket: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    client = s3_server.client()
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(60))
    client.upload_file(str(data), s3_bucket, "datasets/colors/chat.jsonl")
    plan = make_plan(
        model_dir=tiny_model_dir,
        dataset_uri=f"s3://{s3_bucket}/datasets/colors",  # a prefix: every .jsonl/.parquet under it
        output_uri=f"s3://{s3_bucket}/adapters/colors/v1",
        work_dir=tmp_path / "work",
        training={"maxSteps": 20, "checkpointEvery": 10},
    )
    run = run_training(plan)
    assert run.exit_code == 0, run.events[-1]
    assert run.events[0]["dataset"]["usableRows"] == 60

    keys = _keys(client, s3_bucket, "adapters/colors/v1/")
    names = [k.removeprefix("adapters/colors/v1/") for k in keys]
    assert {"adapter_config.json", "adapter_model.safetensors", "manifest.json"} <= set(names)
    for step in (10, 20):
        assert f"checkpoints/step-{step}/COMPLETE" in names
        assert f"checkpoints/step-{step}/adapter_weights.safetensors" in names
    manifest = client.get_object(Bucket=s3_bucket, Key="adapters/colors/v1/manifest.json")["Body"].read()
    completed = run.of("completed")[0]["adapter"]
    assert completed["uri"] == f"s3://{s3_bucket}/adapters/colors/v1"
    assert completed["sha256"] == hashlib.sha256(manifest).hexdigest()
    for name, digest in json.loads(manifest)["files"].items():
        body = client.get_object(Bucket=s3_bucket, Key=f"adapters/colors/v1/{name}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == digest


def test_a_restarted_pod_resumes_from_the_newest_checkpoint_complete_on_s3(
    s3_server: Any, s3_bucket: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    client = s3_server.client()
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(60))
    client.upload_file(str(data), s3_bucket, "chat.jsonl")

    def plan_in(work: str):  # type: ignore[no-untyped-def]
        return make_plan(
            model_dir=tiny_model_dir,
            dataset_uri=f"s3://{s3_bucket}/chat.jsonl",
            output_uri=f"s3://{s3_bucket}/out",
            work_dir=tmp_path / work,
            training={"maxSteps": 20, "checkpointEvery": 10},
        )

    assert run_training(plan_in("pod-1")).exit_code == 0
    # The pod died while uploading step 20 (its marker never arrived), and its local disk is gone.
    client.delete_object(Bucket=s3_bucket, Key="out/checkpoints/step-20/COMPLETE")
    client.delete_object(Bucket=s3_bucket, Key="out/manifest.json")
    shutil.rmtree(tmp_path / "pod-1")

    run = run_training(plan_in("pod-2"))
    assert run.exit_code == 0, run.events[-1]
    assert run.steps == list(range(11, 21))  # from step-10, the newest checkpoint complete on S3
    assert "out/manifest.json" in _keys(client, s3_bucket, "out/")
    assert "out/checkpoints/step-20/COMPLETE" in _keys(client, s3_bucket, "out/")


def test_unreachable_bucket_fails_as_a_storage_error(s3_server: Any, tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows(20))
    plan = make_plan(
        model_dir=tiny_model_dir,
        dataset_uri=data.as_uri(),
        output_uri="s3://no-such-bucket-here/out",
        work_dir=tmp_path / "work",
    )
    run = run_training(plan)
    assert run.exit_code == 1  # may heal (the bucket may be created): the Job retries
    failed = run.of("failed")[0]
    assert failed["reason"] == "StorageError"
    assert "no-such-bucket-here" in failed["message"]
