"""Unit: the two Dockerfiles (they cannot be built here) are pinned, non-root, and install what they run."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from peft_operator.settings import OperatorSettings

ROOT = Path(__file__).resolve().parents[2]
IMAGES = {"operator": ROOT / "operator" / "Dockerfile", "runtime": ROOT / "trainer-image" / "Dockerfile"}


def _instructions(path: Path, keyword: str) -> list[str]:
    text = path.read_text().replace("\\\n", " ")
    return [line.split(None, 1)[1] for line in text.splitlines() if line.startswith(keyword + " ")]


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_base_image_is_pinned_to_a_patch_release(image: str) -> None:
    for base in _instructions(IMAGES[image], "FROM"):
        assert re.match(r"^python:\d+\.\d+\.\d+-slim-\w+( AS \w+)?$", base), base


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_image_runs_as_a_numeric_non_root_user(image: str) -> None:
    user = _instructions(IMAGES[image], "USER")[-1]
    uid = int(user.split(":")[0])
    assert uid >= 1000


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_entrypoint_is_a_console_script_of_the_package(image: str) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    entrypoint = _instructions(IMAGES[image], "ENTRYPOINT")[-1]
    assert entrypoint.strip('[]"').split('"')[0] in scripts


def test_each_image_installs_only_its_own_extra() -> None:
    operator, runtime = (" ".join(_instructions(IMAGES[i], "RUN")) for i in ("operator", "runtime"))
    assert '.[operator]"' in operator and "[runtime]" not in operator
    assert '.[runtime]"' in runtime and "[operator]" not in runtime
    assert all("-c constraints.txt" in run for run in (operator, runtime))


def test_pods_run_as_the_runtime_images_user() -> None:
    uid = int(_instructions(IMAGES["runtime"], "USER")[-1].split(":")[0])
    assert OperatorSettings().trainer_run_as_user == uid
