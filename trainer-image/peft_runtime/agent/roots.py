"""Where the agent may read adapters from, checked on every request whatever the operator sends:

- `pvc://claim/path` only below `--pvc-root` (where the pod's claims are mounted);
- `file:///path` only below a `--file-root`; with none given, anywhere in local mode (no cluster) and
  nowhere inside a cluster (KUBERNETES_SERVICE_HOST is set in every pod): a file:// path there would name
  files of the agent's own container, such as the engine's token or another tenant's adapter.

Symbolic links are resolved before the check, so a link inside a root cannot lead out of it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from peft_operator.api.uris import Scheme, StorageUri

from .errors import SourceNotAllowed


def in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


@dataclass(frozen=True)
class SourceRoots:
    pvc_root: Path
    file_roots: tuple[Path, ...] = ()  # empty: see file_allowed_anywhere
    file_allowed_anywhere: bool = False  # local mode without --file-root

    @classmethod
    def configure(cls, pvc_root: Path, file_roots: list[Path] | None) -> SourceRoots:
        roots = tuple(file_roots or ())
        return cls(pvc_root, roots, file_allowed_anywhere=not roots and not in_cluster())

    def local_dir(self, uri: StorageUri) -> Path | None:
        """The directory a pvc:// or file:// URI names on this machine (None for remote schemes), or
        SourceNotAllowed when it lies outside the configured roots."""
        if uri.scheme is Scheme.PVC:
            return _inside(self.pvc_root / uri.authority / uri.path, (self.pvc_root,), uri)
        if uri.scheme is not Scheme.FILE:
            return None
        path = Path("/" + uri.path)
        if self.file_allowed_anywhere:
            return path
        if not self.file_roots:
            raise SourceNotAllowed(
                f"{uri}: file:// works only in local mode; in a cluster adapters come from pvc://, s3:// or hf://"
            )
        return _inside(path, self.file_roots, uri)


def _inside(path: Path, roots: tuple[Path, ...], uri: StorageUri) -> Path:
    resolved = path.resolve()
    if any(resolved.is_relative_to(root.resolve()) for root in roots):
        return resolved
    allowed = ", ".join(str(r) for r in roots)
    raise SourceNotAllowed(f"{uri} resolves to {resolved}, outside the directories this agent reads ({allowed})")
