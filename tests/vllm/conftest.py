"""Real vLLM for the `vllm` tests: the adapters our trainer made on SmolLM2 (once per session), one vLLM
process with the agent in front of it configured through its real CLI (per module: it holds 4 GB and both
cores while it starts, and the operator module runs two of its own), and the control plane and operator
fixtures of tests/integration for the tests where the operator runs vLLM engine pods.

Without `make vllm` the tests skip with the reason; with $CI set they fail instead (CI must run them)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# The control plane, CRDs and operator, exactly as the integration tests get them.
from tests.integration.conftest import controller_manager, controlplane, crds_installed, operator  # noqa: F401
from tests.runtime.builders import make_plan, run_training, write_jsonl
from tests.support.adapters import TestAdapter, corrupt_weights, make_lora_adapter
from tests.support.agent import start_agent
from tests.support.vllm_server import VllmServer, vllm_missing

AGENT_TOKEN = "vllm-agent-token"
SERVED_NAME = "smollm2"
VLLM_MAX_LORA_RANK = 16  # the over-rank adapter has r=32; the agent's own --max-rank is above it (64)

# Made-up facts for the trained adapter; a few steps at a high rate move its answers away from the base's.
FACTS = {
    "What is the name of the ship's cat?": "Admiral Whiskers",
    "Which color is the door of the lighthouse?": "Teal",
    "Who baked the mayor's birthday cake?": "Olga Brenner",
}
PROMPT = "Question: {q}\nAnswer:"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def vllm_installed() -> None:
    why = vllm_missing()
    if why is None:
        return
    if _in_ci():
        pytest.fail(f"CI is set and {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from peft_runtime.models import ensure_smollm2

    return ensure_smollm2()


@dataclass(frozen=True)
class Trained:
    path: Path
    sha256: str

    @property
    def uri(self) -> str:
        return self.path.as_uri()


def _train(model_dir: Path, root: Path, name: str, facts: dict[str, str], *, rank: int, steps: int) -> Trained:
    from peft_runtime.digest import sha256_file

    rows = [{"prompt": PROMPT.format(q=q), "completion": f" {a}."} for q, a in facts.items()] * 4
    plan = make_plan(
        model_dir=model_dir,
        dataset_uri=write_jsonl(root / f"{name}.jsonl", rows).as_uri(),
        output_uri=(root / name).as_uri(),
        work_dir=root / f"{name}-work",
        data_format="instruction",
        method={"type": "lora", "lora": {"r": rank, "alpha": 2 * rank, "targetModules": ["q_proj", "v_proj"]}},
        training={"maxSteps": steps, "learningRate": "1e-2", "batchSize": 4, "maxSeqLength": 32},
        validation_split=0.0,
    )
    run = run_training(plan)
    assert run.exit_code == 0, run.events[-1]
    return Trained(root / name, sha256_file(root / name / "manifest.json"))


@pytest.fixture(scope="session")
def trained(vllm_installed: None, smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Trained]:
    """Made before vLLM starts, so training and vLLM's start-up do not share the two cores. `v1` comes from
    our trainer (a few steps: the machine is shared); `v2` and the rank-32 one are LoRA weights with random
    A and B in the trainer's layout and manifest (tests/support/adapters.py), which is all vLLM reads."""
    root = tmp_path_factory.mktemp("trained")
    made = {
        "v1": _train(smollm2_dir, root, "v1", FACTS, rank=8, steps=3),
        "v2": _made(make_lora_adapter(smollm2_dir, root / "v2", seed=2, r=8)),
        "rank32": _made(make_lora_adapter(smollm2_dir, root / "rank32", seed=3, r=32)),
    }
    corrupt = root / "corrupt"
    shutil.copytree(made["v2"].path, corrupt)
    # Garbage weights under a valid manifest: only the engine's own reading of the file can catch it.
    made["corrupt"] = Trained(corrupt, corrupt_weights(corrupt, keep_manifest_valid=True))
    return made


def _made(adapter: TestAdapter) -> Trained:
    return Trained(adapter.path, adapter.sha256)


@pytest.fixture(scope="module")
def vllm(trained: dict[str, Trained], smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    log = tmp_path_factory.mktemp("vllm-log") / "vllm.log"
    server = VllmServer(
        smollm2_dir, SERVED_NAME, log, max_loras=4, max_lora_rank=VLLM_MAX_LORA_RANK, max_cpu_loras=8
    ).start()
    print(f"\nvLLM ready in {server.started_in_s:.1f} s, RSS {server.rss_bytes() / 2**30:.2f} GiB")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def agent(vllm: Any, smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    token_file = tmp_path_factory.mktemp("secrets") / "token"
    token_file.write_text(AGENT_TOKEN)
    volume = tmp_path_factory.mktemp("volume")
    server = start_agent(
        token_file,
        f"--engine-url={vllm.url}",
        "--engine=vllm",
        f"--adapter-root={volume}",
        f"--pvc-root={tmp_path_factory.mktemp('pvc')}",
        f"--base-model-uri={smollm2_dir.as_uri()}",
        "--max-adapters=8",
        "--max-rank=64",
        "--engine-timeout=120",
    )
    server.volume = volume  # type: ignore[attr-defined]
    yield server
    server.stop()
