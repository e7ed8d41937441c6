"""Unit: the layers point one way. The API package needs pydantic only; the operator needs the API, never
the runtime or torch. Each check imports every module in a fresh interpreter and reads sys.modules."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

WALK_AND_REPORT = """
import importlib, json, pkgutil, sys
package = importlib.import_module({package!r})
names = [package.__name__]
for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
    importlib.import_module(info.name)
    names.append(info.name)
print(json.dumps({{"modules": names, "loaded": sorted({{m.split(".")[0] for m in sys.modules}})}}))
"""


def _import_every_module(package: str) -> tuple[list[str], set[str]]:
    code = WALK_AND_REPORT.format(package=package)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.splitlines()[-1])
    return report["modules"], set(report["loaded"])


def test_importing_every_operator_module_loads_neither_the_runtime_nor_torch() -> None:
    modules, loaded = _import_every_module("peft_operator")
    assert "peft_operator.runner" in modules and "peft_operator.adapterdeployment.agent_client" in modules
    assert not loaded & {"peft_runtime", "torch", "transformers", "peft"}


def test_the_api_package_loads_pydantic_and_nothing_of_either_side() -> None:
    modules, loaded = _import_every_module("peft_operator.api")
    assert "peft_operator.api.agent" in modules
    assert not loaded & {"peft_runtime", "torch", "kopf", "kubernetes", "aiohttp"}


RUNTIME = ROOT / "trainer-image" / "peft_runtime"
RUNTIME_LAYERS = ("train", "serving", "agent", "gate")


def _runtime_imports(path: Path) -> set[str]:
    """The peft_runtime subpackages a module imports (absolute or relative), read from its source."""
    import ast

    package = path.relative_to(RUNTIME).parts[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 2 and node.module:  # from ..common.x import y
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.add(package)
            elif node.module and node.module.startswith("peft_runtime."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("peft_runtime.")}
    return found


def test_train_serve_and_agent_import_the_common_layer_and_never_each_other() -> None:
    """Unit (reads source, imports nothing): the runtime's parts share code only through common/."""
    crossings = []
    for layer in RUNTIME_LAYERS:
        for path in sorted((RUNTIME / layer).rglob("*.py")):
            for imported in _runtime_imports(path) & set(RUNTIME_LAYERS) - {layer}:
                crossings.append(f"{path.relative_to(RUNTIME)} imports peft_runtime.{imported}")
    common = {imported for path in (RUNTIME / "common").rglob("*.py") for imported in _runtime_imports(path)}
    assert crossings == []
    assert common <= {"common"}  # the common layer depends on nothing above it
