"""Unit: the operator and the runtime image do not drag each other's dependencies in."""

from __future__ import annotations

import subprocess
import sys
import tomllib
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
