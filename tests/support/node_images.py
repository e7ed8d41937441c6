"""Images for the real node, which pulls from no registry: the sandbox ("pause") image packed here from the
`pause` binary built with the control plane, and the project's images exported from buildah's storage
(`make images`), each as a docker-archive that `ctr -n k8s.io images import` takes with its name."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import yaml

PAUSE_IMAGE = "registry.k8s.io/pause:peft-local"
CHART_FILE = Path(__file__).resolve().parents[2] / "charts" / "peft-operator" / "Chart.yaml"


def project_images(registry: str = "ghcr.io/peft-operator") -> list[str]:
    """The operator and runtime images as `make images` tags them: with the chart's appVersion."""
    chart = yaml.safe_load(CHART_FILE.read_text())
    return [f"{registry}/operator:{chart['appVersion']}", f"{registry}/runtime:{chart['appVersion']}"]


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


def write_pause_archive(binary: Path, archive: Path) -> Path:
    """A one-layer image holding only `binary` as /pause, its entrypoint."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        _tar_member(tar, "pause", binary.read_bytes(), 0o755)
    layer_bytes = layer.getvalue()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_bytes).hexdigest()]},
    }
    config_bytes = json.dumps(config).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": [PAUSE_IMAGE], "Layers": ["layer.tar"]}]
    with tarfile.open(archive, mode="w") as tar:
        _tar_member(tar, "layer.tar", layer_bytes)
        _tar_member(tar, config_name, config_bytes)
        _tar_member(tar, "manifest.json", json.dumps(manifest).encode())
    return archive


def buildah(images_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """buildah on the repository's image storage (mk/images.mk's BUILDAH)."""
    cmd = ["buildah", "--root", str(images_dir / "storage"), "--runroot", str(images_dir / "run")]
    cmd += ["--storage-driver", "overlay", *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, check=True, env=dict(os.environ, TMPDIR=str(images_dir / "tmp"))
    )


def image_id(images_dir: Path, image: str) -> str:
    """The ID of `image` in buildah's storage; a clear error when `make images` has not built it."""
    try:
        return buildah(images_dir, "inspect", "--type", "image", "--format", "{{.FromImageID}}", image).stdout.strip()
    except subprocess.CalledProcessError as error:
        raise RuntimeError(
            f"image {image} is not in {images_dir}: run `make images` ({error.stderr.strip()})"
        ) from error


def export_image(images_dir: Path, image: str, archive: Path) -> Path:
    """`image` from buildah's storage as a docker-archive named `image` (what `ctr images import` reads)."""
    archive.unlink(missing_ok=True)
    (images_dir / "tmp").mkdir(parents=True, exist_ok=True)
    buildah(images_dir, "push", "--quiet", image, f"docker-archive:{archive}:{image}")
    return archive
