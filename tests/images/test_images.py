"""The two images, built from the repository's Dockerfiles by `make images` and started for real under podman:
as their non-root users, on a read-only root filesystem, the operator against the real kube-apiserver and the
runtime training a tiny model and serving it over HTTP.

Where no registry is reachable (this repository's CI machine), the base python:3.11.14-slim-bookworm is made
locally by tests/images/local_base.sh: Debian bookworm's python3 3.11.2 in /usr/bin instead of python.org's
3.11.14 in /usr/local, plus the host's extra CA certificates. The images are then the project's images on
that base, and `test_python_is_the_bases` says which base ran.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes.client import ApiClient, BatchV1Api, CustomObjectsApi

from tests.images.containers import OFFICIAL_PYTHON, Image, buildah, podman, podman_command
from tests.runtime.builders import chat_rows, make_plan, write_jsonl
from tests.support.controlplane import REPO_ROOT, ControlPlane, free_port
from tests.support.http import call_json
from tests.support.kubelet import wait_for
from tests.support.operator_process import operator_kubeconfig
from tests.support.secrets import create_referenced_secrets
from tests.support.tiny_model import build_tiny_llama

pytestmark = [pytest.mark.images, pytest.mark.timeout(3600)]

OPERATOR_UID = 65532  # operator/Dockerfile: USER 65532:65532
RUNTIME_UID = 10001  # trainer-image/Dockerfile: USER 10001:10001
WHO_AND_WHERE = (
    "import os, json; root = [l.split()[3] for l in open('/proc/mounts') if l.split()[1] == '/'][-1].split(',')\n"
    "try:\n    open('/probe', 'w'); wrote = True\nexcept OSError:\n    wrote = False\n"
    "print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), 'root': root, 'wrote': wrote}))"
)


@pytest.fixture(scope="module")
def operator_image(built_images: tuple[Image, Image]) -> Image:
    return built_images[0]


@pytest.fixture(scope="module")
def runtime_image(built_images: tuple[Image, Image]) -> Image:
    return built_images[1]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder the containers' users can read (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="peft-images-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_build_context_is_the_sources_only(operator_image: Image, tmp_path: Path) -> None:
    """.dockerignore keeps .git, .venv, .controlplane, .images and every cache out of the build context."""
    probe = tmp_path / "Dockerfile"
    probe.write_text(
        "FROM python:3.11.14-slim-bookworm\nCOPY . /context\n"
        "RUN cd /context && find . -maxdepth 3 -not -path './operator/*/*' -not -path './trainer-image/*/*' | sort\n"
    )
    tag = "localhost/peft-context-probe:test"
    done = buildah("build", "--pull=never", "--isolation", "chroot", "-f", str(probe), "-t", tag, str(REPO_ROOT))
    buildah("rmi", tag, check=False)
    listed = {line.strip() for line in done.stdout.splitlines() if line.startswith("./")}
    assert {"./pyproject.toml", "./constraints.txt", "./README.md", "./operator", "./trainer-image"} <= listed
    assert "./operator/Dockerfile" in listed and "./trainer-image/peft_runtime" in listed
    top = {path.split("/")[1] for path in listed}
    assert top == {"pyproject.toml", "constraints.txt", "README.md", "operator", "trainer-image"}, sorted(top)
    assert not [path for path in listed if "__pycache__" in path or path.endswith(".egg-info")]


def test_python_is_the_bases(operator_image: Image, runtime_image: Image) -> None:
    """On the official base, python.org's 3.11.14; on the locally made one, Debian's 3.11.2 (said here)."""
    for image in (operator_image, runtime_image):
        version = image.run("-c", "import platform; print(platform.python_version())", entrypoint="python")
        assert version.returncode == 0, version.stderr
        if image.local_base:
            assert "3.11.2" in image.local_base
            assert version.stdout.strip() == "3.11.2", f"{image.name} on {image.local_base}"
        else:
            assert version.stdout.strip() == OFFICIAL_PYTHON


@pytest.mark.parametrize(
    ("which", "freeze", "title"),
    [(0, "/opt/venv/pip-freeze.txt", "peft-operator"), (1, "/opt/peft-runtime/pip-freeze.txt", "peft-runtime")],
)
def test_image_carries_oci_labels_and_its_pip_freeze(
    built_images: tuple[Image, Image], which: int, freeze: str, title: str
) -> None:
    image = built_images[which]
    labels = image.labels
    assert labels["org.opencontainers.image.title"] == title
    assert labels["org.opencontainers.image.version"] == image.name.rsplit(":", 1)[1]
    assert len(image.revision) == 40 and labels["org.opencontainers.image.revision"] == image.revision
    assert labels["org.opencontainers.image.source"].startswith("https://")
    frozen = image.run(freeze, entrypoint="cat")
    assert frozen.returncode == 0, frozen.stderr
    pins = dict(line.split("==", 1) for line in frozen.stdout.splitlines() if "==" in line)
    constraints = dict(
        line.split("#")[0].strip().split("==", 1)
        for line in (REPO_ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line.split("#")[0]
    )
    expected = {"kopf", "kubernetes", "pydantic"} if which == 0 else {"torch", "transformers", "peft", "pydantic"}
    assert expected <= {name.lower() for name in pins}, sorted(pins)
    for name, version in pins.items():  # what the image holds is what constraints.txt pins
        if name.lower() in constraints:
            assert version == constraints[name.lower()], (
                f"{name}: image {version}, constraints.txt {constraints[name.lower()]}"
            )
    if which == 1:
        assert "kopf" not in {name.lower() for name in pins}


@pytest.mark.parametrize(("which", "uid"), [(0, OPERATOR_UID), (1, RUNTIME_UID)])
def test_image_starts_as_its_non_root_user_on_a_read_only_root(
    built_images: tuple[Image, Image], which: int, uid: int
) -> None:
    image = built_images[which]
    seen = image.run("-c", WHO_AND_WHERE, entrypoint="python")
    assert seen.returncode == 0, seen.stderr
    facts = json.loads(seen.stdout)
    assert (facts["uid"], facts["gid"]) == (uid, uid)
    assert "ro" in facts["root"] and not facts["wrote"]
    # and its own entry point answers, as that user
    command = ["--help"] if which == 0 else ["train", "--help"]
    helped = image.run(*command, entrypoint="peft-operator" if which == 0 else None)
    assert helped.returncode == 0, helped.stderr


def test_operator_image_reconciles_a_finetunejob_on_the_real_apiserver(
    operator_image: Image,
    controlplane: ControlPlane,
    crds_installed: list[str],
    admin: ApiClient,
    namespace: str,
    shared_dir: Path,
) -> None:
    """`peft-operator run` inside its image (uid 65532, read-only root, the chart's RBAC) creates the Job."""
    kubeconfig = shared_dir / "kubeconfig"
    shutil.copyfile(operator_kubeconfig(controlplane, role="peft-operator-image"), kubeconfig)
    kubeconfig.chmod(0o644)  # the container's user is not us
    progress_port, metrics_port = free_port(), free_port()
    name = f"peft-operator-image-{os.getpid()}"
    started = podman(
        "run", "--detach", "--name", name, "--pull=never", "--read-only", "--network=host",
        "--ulimit=nofile=1024:1024", "--ulimit=nproc=1024:1024",
        "--volume", f"{kubeconfig}:/etc/peft/kubeconfig:ro",
        "--env", "KUBECONFIG=/etc/peft/kubeconfig",
        "--env", f"PEFT_PROGRESS_PORT={progress_port}", "--env", f"PEFT_METRICS_PORT={metrics_port}",
        "--env", f"PEFT_PROGRESS_URL=http://127.0.0.1:{progress_port}", "--env", "PEFT_PROGRESS_KEY=image-test-key",
        "--env", "PEFT_RUNTIME_IMAGE=registry.test/peft-runtime:test",
        operator_image.name, "--verbose",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr

    def logs() -> str:
        return podman("logs", name, check=False).stdout[-6000:]

    try:
        wait_for("the operator's /healthz", lambda: _answers(f"http://127.0.0.1:{progress_port}/healthz"), timeout=90)
        body = yaml.safe_load((REPO_ROOT / "examples/finetunejob-lora.yaml").read_text())
        body["metadata"].update(name="from-the-image", namespace=namespace)
        create_referenced_secrets(admin, namespace, body)
        CustomObjectsApi(admin).create_namespaced_custom_object("peft.dev", "v1alpha1", namespace, "finetunejobs", body)
        try:
            wait_for(
                "the operator in its image to create the preflight Job (the example requests a GPU)",
                lambda: any(
                    job.metadata.name == "from-the-image-preflight"
                    for job in BatchV1Api(admin).list_namespaced_job(namespace).items
                ),
                timeout=90,
            )
        except AssertionError as error:
            raise AssertionError(f"{error}\noperator log:\n{logs()}") from None
        job = BatchV1Api(admin).read_namespaced_job("from-the-image-preflight", namespace)
        assert job.spec.template.spec.containers[0].image == "registry.test/peft-runtime:test"
        state = podman("inspect", "--format", "{{.State.Running}} {{.Config.User}}", name).stdout.split()
        assert state == ["true", "65532:65532"], logs()
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            assert b"peft_operator_reconciles_total" in response.read()
    finally:
        podman("rm", "--force", "--time=5", name, check=False)


def test_runtime_image_trains_a_tiny_model_and_serves_it_over_http(runtime_image: Image, shared_dir: Path) -> None:
    """`peft-runtime train` then `peft-runtime serve` in the image (uid 10001, read-only root, /tmp a tmpfs as
    the pod's emptyDir), the model mounted read-only; the test asks the server from outside the container."""
    model = build_tiny_llama(shared_dir / "model", seed=0)
    data = write_jsonl(shared_dir / "data" / "chat.jsonl", chat_rows(64))
    output = shared_dir / "out"
    output.mkdir()
    os.chown(output, RUNTIME_UID, RUNTIME_UID)
    plan = make_plan(
        model_dir=Path("/models/tiny"),
        dataset_uri="file:///data/chat.jsonl",
        output_uri="file:///out/colors-v1",
        work_dir=Path("/tmp/peft-work"),
        training={"maxSteps": 10, "batchSize": 4, "checkpointEvery": 5},
    )
    (shared_dir / "plan").mkdir()
    (shared_dir / "plan" / "plan.json").write_text(plan.model_dump_json(by_alias=True))
    for path in [model, *model.rglob("*"), data.parent, data, shared_dir / "plan", *(shared_dir / "plan").iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    mounts = (
        "--volume", f"{model}:/models/tiny:ro", "--volume", f"{data.parent}:/data:ro",
        "--volume", f"{shared_dir / 'plan'}:/etc/peft/plan:ro",
        "--env", "HOME=/tmp", "--env", "HF_HOME=/tmp/peft-work/hf", "--env", "HF_HUB_OFFLINE=1",
    )  # fmt: skip

    trained = runtime_image.run(
        "train", "--plan", "/etc/peft/plan/plan.json", options=(*mounts, "--volume", f"{output}:/out"), timeout=600
    )
    assert trained.returncode == 0, trained.stderr[-4000:]
    adapter = output / "colors-v1"
    manifest = json.loads((adapter / "manifest.json").read_text())
    assert manifest["baseModel"]["uri"] == "file:///models/tiny", manifest
    assert adapter.stat().st_uid == RUNTIME_UID

    port = free_port()
    name = f"peft-runtime-image-{os.getpid()}"
    server = subprocess.Popen(
        podman_command(
            "run", "--rm", "--name", name, "--pull=never", "--read-only", "--network=host",
            "--ulimit=nofile=1024:1024", "--ulimit=nproc=1024:1024",
            *mounts, "--volume", f"{output}:/adapters:ro", runtime_image.name,
            "serve", "--model", "/models/tiny", "--served-model-name", "tiny", "--host", "127.0.0.1",
            "--port", str(port), "--adapter", "colors-v1=/adapters/colors-v1", "--threads", "1",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        while not _answers(f"{url}/v1/models"):
            assert server.poll() is None, f"serve exited with {server.returncode}:\n{server.stdout.read()[-4000:]}"  # type: ignore[union-attr]
            assert time.monotonic() - started < 180, "serve did not answer within 180 s"
            time.sleep(0.5)
        status, models = call_json(f"{url}/v1/models", "GET", timeout=10)
        assert status == 200 and {"tiny", "colors-v1"} <= {m["id"] for m in models["data"]}, models
        request = {"model": "colors-v1", "messages": [{"role": "user", "content": "What color is the sky?"}]}
        status, answer = call_json(f"{url}/v1/chat/completions", "POST", {**request, "max_tokens": 8}, timeout=60)
        assert status == 200, answer
        assert answer["model"] == "colors-v1" and answer["choices"][0]["message"]["content"]
    finally:
        podman("stop", "--time=5", name, check=False)
        server.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except (OSError, ValueError):
        return False
