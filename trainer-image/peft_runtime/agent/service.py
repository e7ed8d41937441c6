"""What the agent does for each request: make one adapter version present, verified and loaded (or gone).

Level-triggered and idempotent: a PUT for what the engine already serves from the right path is a no-op; a
PUT after an engine restart re-loads from the verified files on the volume (no download); a DELETE of what
is not there succeeds. Operations on the same name are serialized; different names proceed in parallel.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections import defaultdict
from pathlib import Path

from peft_operator.api.adapterdeployment import AdapterState
from peft_operator.api.agent import AdapterList, AdapterReport, EngineInfo, LoadAdapterRequest, UnloadReport
from peft_operator.api.uris import parse_uri
from peft_runtime.common.errors import AdapterCorrupt, ChecksumMismatch, ServingError, TooManyAdapters
from peft_runtime.digest import DigestMismatchError, verify_adapter_dir

from .compat import Compatibility
from .engine_client import EngineClient
from .fetch import fetch
from .roots import SourceRoots
from .store import AdapterStore, check_name

log = logging.getLogger(__name__)


class AdapterAgent:
    def __init__(
        self,
        store: AdapterStore,
        engine: EngineClient,
        compatibility: Compatibility,
        *,
        max_adapters: int,
        roots: SourceRoots,
    ) -> None:
        self.store = store
        self.engine = engine
        self.compatibility = compatibility
        self.max_adapters = max_adapters
        self.roots = roots
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._attempts: dict[str, AdapterReport] = {}  # Loading / Failed, for names the engine does not hold

    async def put(self, name: str, request: LoadAdapterRequest) -> AdapterReport:
        check_name(name)
        self.roots.local_dir(parse_uri(request.uri))  # refuses a source outside the roots before any work
        target = self.store.version_dir(name, request.sha256)
        async with self._locks[name]:
            view = await self.engine.view()
            pinned_as_asked = view.memory.get(name, (True, request.pinned))[1] == request.pinned
            if view.adapters.get(name) == str(target) and target.is_dir() and pinned_as_asked:
                return AdapterReport(name=name, state=AdapterState.LOADED, digest=request.sha256, path=str(target))
            if name not in view.adapters and len(view.adapters) >= self.max_adapters:
                raise TooManyAdapters(
                    f"the engine holds {len(view.adapters)} adapters, maxAdapters: unload one or raise limits.maxAdapters"
                )
            self._attempts[name] = AdapterReport(name=name, state=AdapterState.LOADING, digest=request.sha256)
            try:
                path = await asyncio.to_thread(self._materialize, name, request)
                await self.engine.load(name, str(path), replace=name in view.adapters, pinned=request.pinned)
            except ServingError as error:
                if view.adapters.get(name) != str(target):  # the engine did not take it: no files left behind
                    await asyncio.to_thread(shutil.rmtree, target, True)
                self._attempts[name] = AdapterReport(
                    name=name,
                    state=AdapterState.FAILED,
                    digest=request.sha256,
                    reason=str(error.reason),
                    message=error.message,
                )
                log.warning("Adapter %s (%s) failed: %s: %s", name, request.uri, error.reason, error.message)
                raise
            self._attempts.pop(name, None)
            await asyncio.to_thread(self.store.remove, name, request.sha256)  # older versions
        log.info("Loaded adapter %s from %s (sha256 %s)", name, request.uri, request.sha256[:12])
        return AdapterReport(name=name, state=AdapterState.LOADED, digest=request.sha256, path=str(path))

    def _materialize(self, name: str, request: LoadAdapterRequest) -> Path:
        """The verified, compatible adapter directory on the volume: reused if present, else downloaded."""
        target = self.store.version_dir(name, request.sha256)
        if target.is_dir():
            try:
                self.compatibility.check(verify_adapter_dir(target, request.sha256), target, self.engine.kind)
                return target
            except (DigestMismatchError, ValueError):
                log.warning("Adapter files in %s no longer match their digest: downloading again", target)
                shutil.rmtree(target, ignore_errors=True)
        staging = self.store.staging_dir(name)
        try:
            fetch(
                parse_uri(request.uri),
                staging,
                roots=self.roots,
                credentials_env_prefix=request.credentials_env_prefix or "",
                credentials=request.credentials,
            )
            try:
                manifest = verify_adapter_dir(staging, request.sha256)
            except DigestMismatchError as error:
                raise ChecksumMismatch(f"{request.uri}: {error}") from error
            except ValueError as error:
                raise AdapterCorrupt(
                    f"{request.uri}: manifest.json is not a valid adapter manifest: {error}"
                ) from error
            self.compatibility.check(manifest, staging, self.engine.kind)
            return self.store.install(staging, name, request.sha256)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    async def delete(self, name: str) -> UnloadReport:
        check_name(name)
        async with self._locks[name]:
            unloaded = await self.engine.unload(name)
            removed = await asyncio.to_thread(self.store.remove, name)
            self._attempts.pop(name, None)
        log.info("Removed adapter %s (engine held it: %s)", name, unloaded)
        return UnloadReport(name=name, unloaded=unloaded, removed_files=removed)

    async def list(self) -> AdapterList:
        view = await self.engine.view()
        reports = [
            AdapterReport(
                name=name,
                state=AdapterState.LOADED,
                digest=self.store.digest_of(name, root),
                path=root,
                resident=view.memory[name][0] if name in view.memory else None,
                pinned=view.memory[name][1] if name in view.memory else None,
            )
            for name, root in sorted(view.adapters.items())
        ]
        reports += [r for name, r in sorted(self._attempts.items()) if name not in view.adapters]
        return AdapterList(
            engine=EngineInfo(url=self.engine.url, base_model=view.base_model, engine=self.engine.kind),
            adapters=reports,
        )

    async def get(self, name: str) -> AdapterReport | None:
        check_name(name)
        return next((r for r in (await self.list()).adapters if r.name == name), None)
