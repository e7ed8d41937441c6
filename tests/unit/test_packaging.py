"""Unit: the operator and the runtime image do not drag each other's dependencies in."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _extras() -> dict[str, list[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["optional-dependencies"]  # type: ignore[no-any-return]


def test_operator_extra_has_no_torch_and_runtime_extra_has_no_kopf() -> None:
    extras = _extras()
    assert not any(dep.startswith(("torch", "transformers", "peft", "bitsandbytes")) for dep in extras["operator"])
    assert not any(dep.startswith(("kopf", "kubernetes")) for dep in extras["runtime"])


def test_api_models_import_without_torch_or_kopf() -> None:
    blocked = "import sys\nfor m in ('torch', 'kopf', 'transformers', 'kubernetes'): sys.modules[m] = None\n"
    code = blocked + "import peft_operator.api, peft_operator.crdgen\nprint('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_torch_is_pinned_in_constraints() -> None:
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line)
    for package in ("torch", "transformers", "peft", "bitsandbytes", "kopf", "kubernetes", "pydantic"):
        assert package in pins, f"{package} is not pinned"


def test_the_operator_image_context_builds_a_wheel_with_no_runtime_code(tmp_path: Path) -> None:
    """What operator/Dockerfile copies (no trainer-image/) still installs: package discovery skips the runtime."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "operator" / "peft_operator", tmp_path / "operator" / "peft_operator")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", "dist", "."]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "peft_operator/api/agent.py" in names
    assert not [name for name in names if name.startswith("peft_runtime/")]
