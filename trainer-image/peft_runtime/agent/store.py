"""The shared adapter volume: `<root>/<name>/<sha256>/` holds one verified adapter version.

A download goes to `<root>/.staging/<name>-<random>/` (same filesystem), is verified there, and is renamed
into place: the engine never sees a half-written directory. Names are DNS labels, or `<namespace>/<name>`
for an adapter attached from another namespace (kept in the folder `<namespace>_<name>`: '_' is in no DNS
label, so folders never collide), and digests are 64 hex characters, so no path built here can leave the root.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from peft_operator.api.adapterattachment import is_served_name
from peft_operator.api.agent import SHA256_DIR_RE
from peft_runtime.common.errors import BadRequest

STAGING = ".staging"


def check_name(name: str) -> str:
    if not is_served_name(name):
        raise BadRequest(
            f"adapter name '{name}' is not a DNS-1123 label (at most 63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit) nor <namespace>/<label>"
        )
    return name


def _folder(name: str) -> str:
    return check_name(name).replace("/", "_")


class AdapterStore:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.root / STAGING, ignore_errors=True)  # leftovers of a crash mid-download

    def version_dir(self, name: str, digest: str) -> Path:
        if not SHA256_DIR_RE.match(digest):
            raise BadRequest(f"'{digest}' is not a sha256 digest")
        return self.root / _folder(name) / digest

    def staging_dir(self, name: str) -> Path:
        parent = self.root / STAGING
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{_folder(name)}-", dir=parent))

    def install(self, staging: Path, name: str, digest: str) -> Path:
        """Move a verified staging directory into place; a version already there wins (same content)."""
        target = self.version_dir(name, digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(staging, ignore_errors=True)
        else:
            staging.rename(target)
        return target

    def digest_of(self, name: str, path: str | None) -> str | None:
        """The digest in an engine-reported path, if it is one of ours (<root>/<name>/<sha256>)."""
        if not path or not is_served_name(name):  # an engine may hold names the agent never loaded
            return None
        candidate = Path(path)
        if candidate.parent == self.root / _folder(name) and SHA256_DIR_RE.match(candidate.name):
            return candidate.name
        return None

    def remove(self, name: str, keep: str | None = None) -> bool:
        """Delete every version of `name` (except `keep`); True when something was deleted."""
        folder = self.root / _folder(name)
        if not folder.is_dir():
            return False
        removed = False
        for version in folder.iterdir():
            if version.name != keep:
                shutil.rmtree(version, ignore_errors=True)
                removed = True
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)
        return removed
