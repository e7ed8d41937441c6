"""Runtime: per-source S3 settings and keys. The operator gives every credentials Secret its own env prefix
(MODEL_, DATASET_, OUTPUT_, ADAPTER_<secret>_); the prefixed variables must win over the plain AWS_*
ones. Proven with the endpoint (only the prefixed endpoint reaches the real S3 server on loopback) and with
keys: the server checks them (tests/support/s3_server.py), and each tenant's keys reach only its bucket."""

from __future__ import annotations

from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from peft_operator.adapterdeployment.engine import adapter_credentials_prefix
from peft_operator.api import parse_uri
from peft_operator.api.plan import DATASET_CREDENTIALS_PREFIX, OUTPUT_CREDENTIALS_PREFIX
from peft_runtime.agent.errors import SourceUnavailable
from peft_runtime.agent.fetch import fetch
from peft_runtime.agent.roots import SourceRoots
from peft_runtime.common.storage import StorageError, download_s3
from tests.runtime.builders import chat_rows, make_plan, run_training, write_jsonl
from tests.runtime.conftest import S3Server
from tests.support.s3_server import Credentials


def test_prefixed_endpoint_and_keys_win_over_the_plain_ones(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3_server.client().put_object(Bucket=s3_bucket, Key="data/train.jsonl", Body=b'{"text": "hi"}\n')
    for key, value in s3_server.env.items():
        monkeypatch.setenv(DATASET_CREDENTIALS_PREFIX + key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    uri = parse_uri(f"s3://{s3_bucket}/data/train.jsonl")

    with pytest.raises(StorageError):
        download_s3(uri, tmp_path / "plain")
    downloaded = download_s3(uri, tmp_path / "prefixed", DATASET_CREDENTIALS_PREFIX)
    assert downloaded.read_text() == '{"text": "hi"}\n'


# --------------------------------------------------------------------------- keys are checked


def _with_prefix(monkeypatch: pytest.MonkeyPatch, prefix: str, env: dict[str, str]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(prefix + key, value)


def test_a_wrong_key_gets_403_from_the_s3_server(s3_server: S3Server) -> None:
    """The server in these tests checks keys, so a test passing here means the right keys were sent."""
    bucket = s3_server.tenants["tenant-a"].bucket
    right = s3_server.tenants["tenant-a"].credentials
    for credentials, code in [
        (Credentials("AKIAUNKNOWNKEY000000", right.secret_key), "InvalidAccessKeyId"),
        (Credentials(right.access_key, "not-the-secret"), "SignatureDoesNotMatch"),
    ]:
        with pytest.raises(ClientError) as refused:
            s3_server.client(credentials).list_objects_v2(Bucket=bucket)
        assert refused.value.response["Error"]["Code"] == code
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    # Other tests may have written to this bucket (the server lives for the session): only the answer counts.
    assert s3_server.client(right).list_objects_v2(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_one_tenants_keys_cannot_read_another_tenants_bucket(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = s3_server.tenants["tenant-a"], s3_server.tenants["tenant-b"]
    s3_server.client().put_object(Bucket=a.bucket, Key="data/private.jsonl", Body=b'{"text": "a only"}\n')
    uri = parse_uri(f"s3://{a.bucket}/data/private.jsonl")

    _with_prefix(monkeypatch, DATASET_CREDENTIALS_PREFIX, s3_server.env_for(b.credentials))
    with pytest.raises(StorageError, match="AccessDenied"):
        download_s3(uri, tmp_path / "b", DATASET_CREDENTIALS_PREFIX)
    _with_prefix(monkeypatch, DATASET_CREDENTIALS_PREFIX, s3_server.env_for(a.credentials))
    assert download_s3(uri, tmp_path / "a", DATASET_CREDENTIALS_PREFIX).read_text() == '{"text": "a only"}\n'


def test_trainer_writes_a_private_bucket_with_the_output_keys_and_the_agent_reads_it_with_them(
    s3_server: S3Server, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Train -> upload with OUTPUT_ keys (the job's spec.output.credentialsSecretRef) -> the agent fetches
    with that same Secret under its ADAPTER_<secret>_ prefix; the other tenant's Secret is refused."""
    a, b = s3_server.tenants["tenant-a"], s3_server.tenants["tenant-b"]
    # The plain AWS_* keys reach nothing: only the prefixed, per-Secret keys can work.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOBODY0000000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "nobody")
    _with_prefix(monkeypatch, OUTPUT_CREDENTIALS_PREFIX, s3_server.env_for(a.credentials))
    plan = make_plan(
        model_dir=tiny_model_dir,
        dataset_uri=write_jsonl(tmp_path / "chat.jsonl", chat_rows(20)).as_uri(),
        output_uri=f"s3://{a.bucket}/adapters/support-bot/v1",
        work_dir=tmp_path / "work",
        training={"maxSteps": 4, "checkpointEvery": 4},
    )
    run = run_training(plan)
    assert run.exit_code == 0, run.events[-1]
    adapter_uri = parse_uri(run.of("completed")[0]["adapter"]["uri"])

    roots = SourceRoots(pvc_root=tmp_path / "pvc")
    secret_a, secret_b = adapter_credentials_prefix("tenant-a-s3"), adapter_credentials_prefix("tenant-b-s3")
    _with_prefix(monkeypatch, secret_a, s3_server.env_for(a.credentials))
    _with_prefix(monkeypatch, secret_b, s3_server.env_for(b.credentials))
    # The agent's download starts with a HEAD request: S3 answers it with a bare 403 (no error body).
    with pytest.raises(SourceUnavailable, match=r"\(403\)"):
        fetch(adapter_uri, tmp_path / "as-b", roots=roots, credentials_env_prefix=secret_b)
    with pytest.raises(SourceUnavailable, match=r"\(403\)"):
        fetch(adapter_uri, tmp_path / "ambient", roots=roots)
    fetch(adapter_uri, tmp_path / "as-a", roots=roots, credentials_env_prefix=secret_a)
    assert {"manifest.json", "adapter_model.safetensors", "adapter_config.json"} <= {
        p.name for p in (tmp_path / "as-a").iterdir()
    }
