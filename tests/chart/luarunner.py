"""Argo CD health scripts run by gopher-lua, the Lua VM Argo CD uses, opened as Argo CD opens it.

`tests/argocd/luarunner` (Go) is Argo CD's `runLua` + `ExecuteHealthLua`: SkipOpenLibs, then only package,
base, table and a safe os, so a script that calls `string.format` or `math.floor` fails here as it fails in
Argo CD (string and math only with `resource.customizations.useOpenLibs.<group>_<kind>`)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tests.support.controlplane import REPO_ROOT, find_go

BUILD_SCRIPT = REPO_ROOT / "tests" / "argocd" / "build.sh"
RUNNER = REPO_ROOT / ".argocd" / "bin" / "luarunner"


class LuaRunnerMissing(RuntimeError):
    """No Go toolchain to build the runner, and no runner built earlier."""


class LuaError(RuntimeError):
    """The script raised an error: Argo CD would show the object's health as an error."""


def ensure_runner() -> Path:
    """The runner, built (or found up to date, in well under a second) by tests/argocd/build.sh."""
    go = find_go()
    if go is not None:
        env = dict(os.environ, GO=go)
        proc = subprocess.run(["bash", str(BUILD_SCRIPT)], env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"`make luarunner` failed:\n{proc.stdout}{proc.stderr}")
    if not RUNNER.exists():
        raise LuaRunnerMissing("the gopher-lua runner is not built and there is no Go toolchain: run `make luarunner`")
    return RUNNER


def run_health(runner: Path, script: Path, obj: dict[str, Any], *, open_libs: bool = False) -> dict[str, str]:
    """The {status, message} Argo CD derives from `obj` with the health script `script`."""
    args = [str(runner), *(["-open-libs"] if open_libs else []), str(script)]
    proc = subprocess.run(args, input=json.dumps(obj), capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise LuaError(f"{script.name}: {proc.stderr.strip()}")
    result: dict[str, str] = json.loads(proc.stdout)
    return result
