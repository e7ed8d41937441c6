"""Fixtures for the runtime tests (trainer, server, agent): real tiny models on CPU, real servers on loopback.

- `tiny_model_dir` (session): a tiny Llama model directory with a chat-template tokenizer, built once
  (see tests/support/tiny_model.py).
- `s3_server` (session): a real S3-compatible server (moto, its own process) on 127.0.0.1 that checks keys
  (tests/support/s3_server.py): an admin with access to everything, and tenants `tenant-a` and `tenant-b`
  whose keys reach only their own bucket. While it runs, the standard AWS_* environment variables point
  every boto3 client at it with the admin's keys.
- `s3_bucket`: a fresh, empty bucket on that server.

Nothing in these tests may reach a hub: HF_HUB_OFFLINE=1 for the whole session.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.s3_server import REGION, Credentials, Tenant, start_s3_server
from tests.support.tiny_model import build_tiny_llama

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), seed=0)


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    access_key: str  # the admin's: every bucket
    secret_key: str
    tenants: dict[str, Tenant]
    region: str = REGION

    @property
    def env(self) -> dict[str, str]:
        """The environment a process needs to use this server (already set in the test process)."""
        return self.env_for(Credentials(self.access_key, self.secret_key))

    def env_for(self, credentials: Credentials) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": credentials.access_key,
            "AWS_SECRET_ACCESS_KEY": credentials.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
        }

    def client(self, credentials: Credentials | None = None) -> Any:
        import boto3

        credentials = credentials or Credentials(self.access_key, self.secret_key)
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=credentials.access_key,
            aws_secret_access_key=credentials.secret_key,
        )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    process = start_s3_server(bucket_suffix=uuid.uuid4().hex[:8])
    s3 = S3Server(process.endpoint_url, process.admin.access_key, process.admin.secret_key, process.tenants)
    empty = tmp_path_factory.mktemp("aws") / "none"
    try:
        with pytest.MonkeyPatch.context() as patch:
            for key, value in s3.env.items():
                patch.setenv(key, value)
            # No profile or config file of the machine may leak in.
            patch.setenv("AWS_CONFIG_FILE", str(empty))
            patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
            patch.delenv("AWS_PROFILE", raising=False)
            patch.delenv("AWS_SESSION_TOKEN", raising=False)
            yield s3
    finally:
        process.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    return name
