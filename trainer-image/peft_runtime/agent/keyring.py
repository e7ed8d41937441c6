"""The engine gate's keyring (access.apiKeys: Required): the operator PUTs every valid key's sha256 and its
models; the agent writes them to the file the gate reads (a volume the two containers share). Written whole
and renamed into place, so the gate never reads half a keyring; rewritten only when it changed."""

from __future__ import annotations

import os
from pathlib import Path

from peft_operator.api.agent import Keyring, KeyringReport


def write_keyring(path: Path, keyring: Keyring) -> KeyringReport:
    data = keyring.model_dump_json(by_alias=True).encode()
    keys = len({grant.sha256 for grant in keyring.keys})
    if path.is_file() and path.read_bytes() == data:
        return KeyringReport(keys=keys, changed=False)
    staged = path.with_name(f".{path.name}.next")
    staged.write_bytes(data)
    os.replace(staged, path)
    return KeyringReport(keys=keys, changed=True)
