"""The adapter agent over real HTTP on loopback: a real S3-compatible server (moto), the real built-in engine
with a tiny Llama, real peft adapters with manifests."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.support.adapters import (
    TestAdapter,
    base_uri,
    make_bottleneck_adapter,
    make_ia3_adapter,
    make_loha_adapter,
    make_lora_adapter,
    make_prefix_tuning_adapter,
    make_prompt_tuning_adapter,
    retarget,
    upload_dir,
)
from tests.support.agent import start_agent
from tests.support.http import call_json

TOKEN = "agent-token"
BASE = "tiny-base"
pytestmark = pytest.mark.timeout(120)


# --------------------------------------------------------------------------------------------- fixtures


class EngineUnderTest:
    """The built-in engine on a fixed loopback port, restartable (a restarted engine starts empty)."""

    def __init__(self, model_dir: Path, token_file: Path) -> None:
        self.model_dir = model_dir
        self.token_file = token_file
        self.port = 0
        self._start()

    def _start(self) -> None:
        from peft_runtime.common.http_edge import BackgroundServer, TokenSource
        from peft_runtime.serving.app import create_app
        from peft_runtime.serving.engine import Engine, EngineConfig

        self.engine = Engine(
            EngineConfig(model_dir=self.model_dir, served_name=BASE, max_adapters=8, max_rank=8, threads=1)
        ).start()
        self.http = BackgroundServer(lambda: create_app(self.engine, TokenSource(self.token_file)), port=self.port)
        self.http.start()
        self.port = self.http.port

    @property
    def url(self) -> str:
        return self.http.url

    def restart(self) -> None:
        self.stop()
        self._start()

    def stop(self) -> None:
        self.http.stop()
        self.engine.stop()


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secrets") / "token"
    path.write_text(TOKEN)
    return path


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, token_file: Path) -> Any:
    import torch

    threads = torch.get_num_threads()
    engine = EngineUnderTest(tiny_model_dir, token_file)
    yield engine
    engine.stop()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {"adapters": tmp_path_factory.mktemp("volume"), "pvc": tmp_path_factory.mktemp("pvc")}


def _start_agent(engine_url: str, token_file: Path, adapter_root: Path, pvc_root: Path, model_dir: Path) -> Any:
    return start_agent(
        token_file,
        f"--engine-url={engine_url}",
        f"--adapter-root={adapter_root}",
        f"--pvc-root={pvc_root}",
        f"--base-model-uri={base_uri(model_dir)}",
        f"--base-model-dir={model_dir}",
        "--max-adapters=8",
        "--max-rank=8",
        "--engine-timeout=60",
    )


@pytest.fixture(scope="module")
def agent(engine: Any, token_file: Path, roots: dict[str, Path], tiny_model_dir: Path, s3_server: Any) -> Any:
    server = _start_agent(engine.url, token_file, roots["adapters"], roots["pvc"], tiny_model_dir)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, TestAdapter]:
    root = tmp_path_factory.mktemp("made")
    alien = make_lora_adapter(tiny_model_dir, root / "alien", seed=16)
    alien = TestAdapter(alien.path, retarget(alien.path, "q_proj", "wq"), alien.manifest)
    return {
        "alien-modules": alien,
        "v1": make_lora_adapter(tiny_model_dir, root / "v1", seed=11),
        "v2": make_lora_adapter(tiny_model_dir, root / "v2", seed=12, r=8),
        "dora": make_lora_adapter(tiny_model_dir, root / "dora", seed=13, use_dora=True),
        "rank-16": make_lora_adapter(tiny_model_dir, root / "r16", seed=14, r=16),
        "other-base": make_lora_adapter(tiny_model_dir, root / "other", seed=15, uri="hf://someone/else"),
        "loha": make_loha_adapter(tiny_model_dir, root / "loha"),
        "ia3": make_ia3_adapter(tiny_model_dir, root / "ia3"),
        "prefix": make_prefix_tuning_adapter(tiny_model_dir, root / "prefix"),
        "prompt": make_prompt_tuning_adapter(tiny_model_dir, root / "prompt"),
        "adapter": make_bottleneck_adapter(tiny_model_dir, root / "bottleneck"),
    }


# --------------------------------------------------------------------------------------------- HTTP


def call(server: Any, method: str, path: str, body: Any = None, token: str | None = TOKEN) -> tuple[int, Any]:
    return call_json(server.url + path, method, body, token)


def put(agent: Any, name: str, uri: str, sha256: str) -> tuple[int, Any]:
    return call(agent, "PUT", f"/v1/adapters/{name}", {"uri": uri, "sha256": sha256})


def engine_adapters(engine: Any) -> dict[str, str]:
    return {m["id"]: m["root"] for m in call(engine, "GET", "/v1/models")[1]["data"] if m.get("parent")}


def reported(agent: Any) -> dict[str, Any]:
    status, body = call(agent, "GET", "/v1/adapters")
    assert status == 200, body
    return {a["name"]: a for a in body["adapters"]}


# --------------------------------------------------------------------------------------------- tests


def test_put_fetches_from_s3_verifies_loads_and_reports(
    agent: Any, engine: Any, adapters: dict[str, TestAdapter], s3_server: Any, s3_bucket: str, roots: dict[str, Path]
) -> None:
    from peft_operator.api.agent import AdapterList, AdapterReport

    adapter = adapters["v1"]
    uri = upload_dir(s3_server.client(), s3_bucket, "tenants/a/v1", adapter.path)

    status, body = put(agent, "tenant-a", uri, adapter.sha256)

    assert status == 200, body
    report = AdapterReport.model_validate(body)
    assert (report.state.value, report.digest) == ("Loaded", adapter.sha256)
    installed = roots["adapters"] / "tenant-a" / adapter.sha256
    assert report.path == str(installed)
    assert sorted(p.name for p in installed.iterdir()) == sorted(p.name for p in adapter.path.iterdir())
    assert engine_adapters(engine)["tenant-a"] == str(installed)
    status, answer = call(engine, "POST", "/v1/completions", {"model": "tenant-a", "prompt": "Hello", "max_tokens": 4})
    assert status == 200, answer

    listing = AdapterList.model_validate(call(agent, "GET", "/v1/adapters")[1])
    assert listing.engine.base_model == BASE
    assert listing.engine.engine == "builtin"
    assert [(a.name, a.state.value, a.digest) for a in listing.adapters] == [("tenant-a", "Loaded", adapter.sha256)]

    # The operator retries: the same PUT again is a no-op that still answers Loaded.
    assert put(agent, "tenant-a", uri, adapter.sha256)[1]["state"] == "Loaded"
    assert not any((roots["adapters"] / ".staging").iterdir())


def test_checksum_mismatch_is_refused_and_nothing_is_loaded(
    agent: Any, engine: Any, adapters: dict[str, TestAdapter], s3_server: Any, s3_bucket: str, roots: dict[str, Path]
) -> None:
    client = s3_server.client()
    uri = upload_dir(client, s3_bucket, "tenants/b", adapters["v1"].path)

    status, body = put(agent, "tenant-b", uri, adapters["v2"].sha256)  # the digest of another adapter
    assert (status, body["error"]["reason"]) == (422, "ChecksumMismatch"), body

    client.put_object(Bucket=s3_bucket, Key="tenants/b/adapter_model.safetensors", Body=b"tampered")
    status, body = put(agent, "tenant-b", uri, adapters["v1"].sha256)  # right manifest, wrong file
    assert (status, body["error"]["reason"]) == (422, "ChecksumMismatch"), body
    assert "adapter_model.safetensors" in body["error"]["message"]

    assert "tenant-b" not in engine_adapters(engine)
    assert not (roots["adapters"] / "tenant-b").exists()
    failed = reported(agent)["tenant-b"]
    assert (failed["state"], failed["reason"]) == ("Failed", "ChecksumMismatch")


@pytest.mark.parametrize(
    ("adapter", "status", "reason"),
    [
        ("other-base", 422, "IncompatibleBaseModel"),
        ("alien-modules", 422, "IncompatibleBaseModel"),
        ("rank-16", 422, "RankTooLarge"),
        ("loha", 400, "UnsupportedMethod"),
    ],
)
def test_incompatible_adapter_is_refused_with_the_reason(
    agent: Any, engine: Any, adapters: dict[str, TestAdapter], adapter: str, status: int, reason: str
) -> None:
    made = adapters[adapter]
    got, body = put(agent, "misfit", made.path.as_uri(), made.sha256)
    assert (got, body["error"]["reason"]) == (status, reason), body
    assert "misfit" not in engine_adapters(engine)


@pytest.mark.parametrize("method", ["ia3", "prefix", "prompt", "adapter"])
def test_every_method_passes_the_gate_of_the_builtin_engine_and_answers(
    agent: Any, engine: Any, adapters: dict[str, TestAdapter], method: str
) -> None:
    made = adapters[method]
    status, body = put(agent, f"method-{method}", made.path.as_uri(), made.sha256)
    assert (status, body.get("state")) == (200, "Loaded"), body
    request = {"model": f"method-{method}", "prompt": "Hello", "max_tokens": 4}
    status, answer = call(engine, "POST", "/v1/completions", request)
    assert status == 200, answer
    assert call(agent, "DELETE", f"/v1/adapters/method-{method}")[0] == 200


def test_engine_restart_is_reported_empty_and_reload_uses_the_verified_files(
    agent: Any, engine: Any, adapters: dict[str, TestAdapter], s3_server: Any, s3_bucket: str
) -> None:
    adapter = adapters["v2"]
    client = s3_server.client()
    uri = upload_dir(client, s3_bucket, "tenants/c", adapter.path)
    assert put(agent, "tenant-c", uri, adapter.sha256)[0] == 200

    engine.restart()

    loaded = [name for name, a in reported(agent).items() if a["state"] == "Loaded"]
    assert loaded == []  # what the engine holds, not what the agent once loaded
    for item in client.list_objects_v2(Bucket=s3_bucket)["Contents"]:  # the source is gone...
        client.delete_object(Bucket=s3_bucket, Key=item["Key"])
    status, body = put(agent, "tenant-c", uri, adapter.sha256)  # ...the volume still has the verified copy
    assert (status, body["state"]) == (200, "Loaded"), body
    assert "tenant-c" in engine_adapters(engine)


def test_a_new_digest_replaces_the_old_version(
    agent: Any, engine: Any, adapters: dict[str, TestAdapter], roots: dict[str, Path]
) -> None:
    old, new = adapters["v1"], adapters["v2"]
    assert put(agent, "tenant-d", old.path.as_uri(), old.sha256)[0] == 200
    status, body = put(agent, "tenant-d", new.path.as_uri(), new.sha256)
    assert (status, body["digest"]) == (200, new.sha256)
    assert engine_adapters(engine)["tenant-d"] == str(roots["adapters"] / "tenant-d" / new.sha256)
    assert [p.name for p in (roots["adapters"] / "tenant-d").iterdir()] == [new.sha256]


def test_delete_unloads_and_removes_the_files_and_is_idempotent(
    agent: Any, engine: Any, adapters: dict[str, TestAdapter], roots: dict[str, Path]
) -> None:
    adapter = adapters["dora"]  # the built-in engine hot-loads DoRA too
    assert put(agent, "tenant-e", adapter.path.as_uri(), adapter.sha256)[0] == 200
    status, body = call(agent, "DELETE", "/v1/adapters/tenant-e")
    assert (status, body) == (200, {"name": "tenant-e", "unloaded": True, "removedFiles": True})
    assert "tenant-e" not in engine_adapters(engine)
    assert not (roots["adapters"] / "tenant-e").exists()
    assert call(agent, "DELETE", "/v1/adapters/tenant-e")[1]["unloaded"] is False


def test_pvc_source_is_read_from_the_mounted_claim(
    agent: Any, adapters: dict[str, TestAdapter], roots: dict[str, Path]
) -> None:
    adapter = adapters["v1"]
    shutil.copytree(adapter.path, roots["pvc"] / "team-volume" / "adapters" / "a")
    status, body = put(agent, "tenant-f", "pvc://team-volume/adapters/a", adapter.sha256)
    assert (status, body["state"]) == (200, "Loaded"), body


def test_missing_sources_are_not_found(agent: Any, adapters: dict[str, TestAdapter], s3_bucket: str) -> None:
    sha = adapters["v1"].sha256
    for uri in (f"s3://{s3_bucket}/nothing/here", "file:///definitely/not/here", "pvc://no-claim/x"):
        status, body = put(agent, "ghost", uri, sha)
        assert (status, body["error"]["reason"]) == (404, "SourceNotFound"), (uri, body)


def test_names_and_paths_cannot_leave_their_directory(
    agent: Any, adapters: dict[str, TestAdapter], s3_server: Any, s3_bucket: str
) -> None:
    sha = adapters["v1"].sha256
    for name in ("Upper", "a_b", "a.b", "-lead", "a%2F..%2Fb", "x" * 64):
        status, body = put(agent, name, adapters["v1"].path.as_uri(), sha)
        assert status in (400, 404), (name, body)
    status, body = put(agent, "fine", "file:///tmp/../etc", sha)
    assert (status, body["error"]["reason"]) == (400, "BadRequest")
    status, body = put(agent, "fine", adapters["v1"].path.as_uri(), "not-a-digest")
    assert status == 400

    # Objects beside the adapter, hostile names included, are never fetched: only what manifest.json lists.
    client = s3_server.client()
    upload_dir(client, s3_bucket, "evil", adapters["v1"].path)
    client.put_object(Bucket=s3_bucket, Key="evil/../../escaped", Body=b"x")
    client.put_object(Bucket=s3_bucket, Key="evil//double", Body=b"x")
    status, body = put(agent, "fine", f"s3://{s3_bucket}/evil", sha)
    assert status == 200, body
    assert sorted(p.name for p in Path(body["path"]).iterdir()) == sorted(
        [*adapters["v1"].manifest.files, "manifest.json"]
    )

    # A manifest that lists a name leaving the directory is refused before anything is written outside it.
    manifest = json.loads((adapters["v1"].path / "manifest.json").read_text())
    manifest["files"]["../../escaped"] = "0" * 64
    evil_manifest = json.dumps(manifest).encode()
    client.put_object(Bucket=s3_bucket, Key="evil2/manifest.json", Body=evil_manifest)
    status, body = put(agent, "worse", f"s3://{s3_bucket}/evil2", hashlib.sha256(evil_manifest).hexdigest())
    assert status == 422 and body["error"]["reason"] == "AdapterCorrupt", body


def test_the_api_needs_the_token_but_health_does_not(agent: Any) -> None:
    for token in (None, "wrong"):
        status, body = call(agent, "GET", "/v1/adapters", token=token)
        assert (status, body["error"]["reason"]) == (401, "Unauthorized")
        assert call(agent, "PUT", "/v1/adapters/x", {"uri": "file:///x", "sha256": "0" * 64}, token=token)[0] == 401
        assert call(agent, "DELETE", "/v1/adapters/x", token=token)[0] == 401
    assert call(agent, "GET", "/health", token=None)[0] == 200


def test_an_unreachable_engine_is_a_502(token_file: Path, tmp_path: Path, tiny_model_dir: Path) -> None:
    lonely = _start_agent("http://127.0.0.1:9", token_file, tmp_path / "v", tmp_path / "p", tiny_model_dir)
    try:
        status, body = call(lonely, "GET", "/v1/adapters")
        assert (status, body["error"]["reason"]) == (502, "EngineUnavailable")
    finally:
        lonely.stop()


def test_an_attached_adapter_is_fetched_with_the_credentials_in_its_request_only(
    agent: Any,
    engine: Any,
    adapters: dict[str, TestAdapter],
    s3_server: Any,
    roots: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An adapter attached from tenant-a's namespace: served as tenant-a/pirate, read from tenant-a's bucket
    with tenant-a's keys sent in the PUT (the agent's environment holds none), beside a plain `tenant-a`."""
    tenant_a, tenant_b = s3_server.tenants["tenant-a"], s3_server.tenants["tenant-b"]
    adapter = adapters["v2"]
    uri = upload_dir(s3_server.client(tenant_a.credentials), tenant_a.bucket, "pirate", adapter.path)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)

    def keys(tenant: Any) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": tenant.credentials.access_key,
            "AWS_SECRET_ACCESS_KEY": tenant.credentials.secret_key,
            "AWS_ENDPOINT_URL": s3_server.endpoint_url,
            "AWS_REGION": "us-east-1",
        }

    def put_attached(credentials: dict[str, str] | None) -> tuple[int, Any]:
        body: dict[str, Any] = {"uri": uri, "sha256": adapter.sha256}
        if credentials is not None:
            body["credentials"] = credentials
        return call(agent, "PUT", "/v1/adapters/tenant-a/pirate", body)

    status, body = put_attached(None)
    assert (status, body["error"]["reason"]) == (502, "SourceUnavailable"), body
    status, body = put_attached(keys(tenant_b))  # another tenant's keys do not open tenant-a's bucket
    assert (status, body["error"]["reason"]) == (502, "SourceUnavailable"), body
    assert "(403)" in body["error"]["message"], body
    with caplog.at_level("DEBUG"):
        status, body = put_attached(keys(tenant_a))
    assert status == 200 and body["state"] == "Loaded", body
    assert body["path"] == str(roots["adapters"] / "tenant-a_pirate" / adapter.sha256)
    assert tenant_a.credentials.secret_key not in caplog.text and tenant_b.credentials.secret_key not in caplog.text

    # A plain adapter named like the namespace is another adapter, in another folder.
    shutil.copytree(adapters["v1"].path, roots["pvc"] / "own" / "tenant-a")
    status, body = put(agent, "tenant-a", "pvc://own/tenant-a", adapters["v1"].sha256)
    assert status == 200, body
    status, answer = call(
        engine, "POST", "/v1/completions", {"model": "tenant-a/pirate", "prompt": "Hello", "max_tokens": 4}
    )
    assert status == 200 and answer["model"] == "tenant-a/pirate", answer
    assert reported(agent)["tenant-a/pirate"]["digest"] == adapter.sha256
    assert call(agent, "GET", "/v1/adapters/tenant-a/pirate")[1]["state"] == "Loaded"
    call(agent, "DELETE", "/v1/adapters/tenant-a")
    assert "tenant-a/pirate" in engine_adapters(engine)
    assert (roots["adapters"] / "tenant-a_pirate" / adapter.sha256).is_dir()
    assert call(agent, "DELETE", "/v1/adapters/tenant-a/pirate")[1]["unloaded"] is True
    assert "tenant-a/pirate" not in engine_adapters(engine)
    assert call(agent, "GET", "/v1/adapters/a/b/c")[0] == 404
