"""A real S3 server on loopback that checks keys: moto in its own process, with IAM users per tenant.

moto authenticates and authorizes every request once `INITIAL_NO_AUTH_ACTION_COUNT` requests have been
served (the setting is read from moto's environment when it is imported, so it must be a process of its
own: an in-process ThreadedMotoServer would share moto's settings with everything else in the test
process). The setup below uses exactly that many requests to create the users, their keys and policies
and the tenants' buckets; after it, an unknown key gets InvalidAccessKeyId, a wrong secret
SignatureDoesNotMatch and a tenant's key on another tenant's bucket AccessDenied (all HTTP 403)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

REGION = "us-east-1"
ADMIN = "admin"
TENANTS = ("tenant-a", "tenant-b")
# Per user: create_user, put_user_policy, create_access_key. Per tenant: create_bucket.
SETUP_REQUESTS = 3 * (1 + len(TENANTS)) + len(TENANTS)


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str


@dataclass(frozen=True)
class Tenant:
    name: str
    bucket: str
    credentials: Credentials


@dataclass
class S3Process:
    endpoint_url: str
    admin: Credentials
    tenants: dict[str, Tenant] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(process: subprocess.Popen[bytes], port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {process.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto_server did not listen on 127.0.0.1:{port} within {timeout}s")


def _client(service: str, endpoint_url: str, credentials: Credentials) -> Any:
    import boto3

    return boto3.client(
        service,
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id=credentials.access_key,
        aws_secret_access_key=credentials.secret_key,
    )


def _policy(resources: list[str]) -> str:
    statement = {"Effect": "Allow", "Action": "*" if resources == ["*"] else "s3:*", "Resource": resources}
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]})


def start_s3_server(bucket_suffix: str) -> S3Process:
    """moto_server on a free loopback port, with an admin (everything) and one user per tenant whose
    policy allows only the tenant's bucket `<tenant>-<bucket_suffix>`."""
    port = _free_port()
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT=str(SETUP_REQUESTS))
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = S3Process(f"http://127.0.0.1:{port}", Credentials("unset", "unset"), process=process)
    try:
        _wait_listening(process, port)
        # Free requests (keys are not checked yet): any signature will do.
        iam = _client("iam", server.endpoint_url, Credentials("setup", "setup"))
        buckets = {tenant: f"{tenant}-{bucket_suffix}" for tenant in TENANTS}
        keys = {}
        for user, resources in [
            (ADMIN, ["*"]),
            *((t, [f"arn:aws:s3:::{b}", f"arn:aws:s3:::{b}/*"]) for t, b in buckets.items()),
        ]:
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=_policy(resources))
            key = iam.create_access_key(UserName=user)["AccessKey"]
            keys[user] = Credentials(key["AccessKeyId"], key["SecretAccessKey"])
        server.admin = keys[ADMIN]
        s3 = _client("s3", server.endpoint_url, server.admin)
        for tenant, bucket in buckets.items():
            s3.create_bucket(Bucket=bucket)
            server.tenants[tenant] = Tenant(tenant, bucket, keys[tenant])
    except BaseException:
        server.stop()
        raise
    return server
