"""What the CPU preflight step costs, against what a GPU pod waits for before its trainer can even fail.

    make bench-preflight      # builds both images and a registry (CNCF distribution, from the Go module proxy)

A job that requests GPUs first runs `peft-runtime preflight` in a CPU-only pod; without it, a wrong dataset or
targetModules fails only inside the GPU pod, after the node pulled the runtime image, the trainer downloaded
the model and loaded it. This measures, in one run on this machine:
- the preflight: the wall time of `peft-runtime preflight` on SmolLM2-135M and a chat dataset (process start
  and imports included): the latency it adds before the GPU Job when the CPU node has the image;
- the pull: a real OCI registry (distribution) on loopback holds the runtime image (pushed with buildah), and
  the image is pulled into an empty image store (buildah pull: download, decompress and unpack every layer),
  as a GPU node without the image does before the trainer starts. On loopback the network costs nothing, so
  this is the least such a node waits; a cluster adds the image's compressed size over its bandwidth.
The model download is not measured: it is the weights' size over the bandwidth to the model store (140 GB
for a 70B base in bf16).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REGISTRY_CONFIG = """version: 0.1
log: {{level: error}}
storage:
  filesystem: {{rootdirectory: {root}}}
http: {{addr: 127.0.0.1:{port}}}
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_registry(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the registry exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/v2/", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    sys.exit("the registry did not answer /v2/ within 60 s")


def _buildah(root: Path, *args: str) -> list[str]:
    return [
        "buildah",
        "--root",
        str(root / "storage"),
        "--runroot",
        str(root / "run"),
        "--storage-driver",
        "overlay",
        *args,
    ]


def _timed(command: list[str], env: dict[str, str] | None = None) -> float:
    started = time.monotonic()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command[:6])} ... failed with {done.returncode}:\n{done.stderr[-3000:]}")
    return time.monotonic() - started


def _preflight_seconds(scratch: Path) -> float:
    from bench.trainer_throughput import chat_rows
    from peft_runtime.models import ensure_smollm2
    from tests.runtime.builders import make_plan, write_jsonl

    data = write_jsonl(scratch / "chat.jsonl", chat_rows(400))
    plan = make_plan(
        model_dir=ensure_smollm2(),
        dataset_uri=data.as_uri(),
        output_uri=(scratch / "out").as_uri(),
        work_dir=scratch / "work",
        method={"type": "lora", "lora": {"r": 16, "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj"]}},
    )
    path = scratch / "plan.json"
    path.write_text(plan.model_dump_json(by_alias=True))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return _timed([sys.executable, "-m", "peft_runtime.cli", "preflight", "--plan", str(path)], env)


def _registry_size(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry-bin", type=Path, required=True, help="distribution's `registry` binary")
    parser.add_argument("--images-dir", type=Path, required=True, help="buildah's store holding the runtime image")
    parser.add_argument("--image", required=True, help="the runtime image's name in that store")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-preflight-", dir=args.images_dir) as folder:
        scratch = Path(folder)
        preflight = _preflight_seconds(scratch)

        port = _free_port()
        config = scratch / "registry.yml"
        config.write_text(REGISTRY_CONFIG.format(root=scratch / "registry", port=port))
        quiet = {**os.environ, "OTEL_TRACES_EXPORTER": "none", "OTEL_SDK_DISABLED": "true"}  # no collector here
        registry = subprocess.Popen([str(args.registry_bin), "serve", str(config)], env=quiet)
        try:
            _wait_for_registry(f"http://127.0.0.1:{port}", registry)
            reference = f"docker://127.0.0.1:{port}/peft/runtime:bench"
            subprocess.run(
                [*_buildah(args.images_dir, "push", "--tls-verify=false", args.image, reference)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            compressed = _registry_size(scratch / "registry")
            empty_store = scratch / "node"
            pull = _timed(_buildah(empty_store, "pull", "--tls-verify=false", reference))
            inspect = subprocess.run(
                _buildah(empty_store, "inspect", "--type", "image", reference.removeprefix("docker://")),
                check=True,
                capture_output=True,
                text=True,
            )
            layers = len(json.loads(inspect.stdout)["OCIv1"]["rootfs"]["diff_ids"])
        finally:
            registry.terminate()
            registry.wait(timeout=30)
    print(f"runtime image {args.image}: {layers} layers, {compressed / 2**30:.2f} GiB in the registry (compressed)")
    print(f"pull into an empty store from a registry on loopback: {pull:8.1f} s")
    print(f"peft-runtime preflight (SmolLM2, 400 chat rows, wall): {preflight:8.1f} s")
    print(f"ratio pull / preflight: {pull / preflight:.1f}x (the pull is the least a GPU node without the image waits)")


if __name__ == "__main__":
    main()
