"""Runtime: per-source S3 settings. The operator gives every credentials Secret its own env prefix
(MODEL_, DATASET_, OUTPUT_, ADAPTER_<secret>_); the prefixed variables must win over the plain AWS_*
ones. Proven with the endpoint: only the prefixed endpoint reaches the real S3 server on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from peft_operator.api import parse_uri
from peft_operator.api.plan import DATASET_CREDENTIALS_PREFIX
from peft_runtime.train.errors import TrainerError
from peft_runtime.train.storage import download_s3
from tests.runtime.conftest import S3Server


def test_prefixed_endpoint_and_keys_win_over_the_plain_ones(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3_server.client().put_object(Bucket=s3_bucket, Key="data/train.jsonl", Body=b'{"text": "hi"}\n')
    for key, value in s3_server.env.items():
        monkeypatch.setenv(DATASET_CREDENTIALS_PREFIX + key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    uri = parse_uri(f"s3://{s3_bucket}/data/train.jsonl")

    with pytest.raises(TrainerError):
        download_s3(uri, tmp_path / "plain")
    downloaded = download_s3(uri, tmp_path / "prefixed", DATASET_CREDENTIALS_PREFIX)
    assert downloaded.read_text() == '{"text": "hi"}\n'
