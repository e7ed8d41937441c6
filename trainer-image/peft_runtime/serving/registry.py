"""The one object that owns the model and the adapters loaded into it.

Locks, from outermost to innermost (never taken the other way round):
- `_admin` serializes every change to the adapter set: loads, unloads, and dropping retired weights;
- `model_lock` guards the model's structure: one forward step, or a change that adds or removes layers;
- `_state` guards the name tables; it is never held across model work, so the event loop never waits on it.

A load does not stop generation. Reading and checking the files needs no lock. Attaching the weights needs
the model lock only when the adapter targets modules that no loaded adapter has wrapped yet (peft then
replaces modules in the tree); otherwise peft merely adds entries for the new adapter to existing layers,
which a concurrent forward pass never reads: rows can only name an adapter once its load has finished and
the layers' stacks (lora_batching.py) have been rebuilt, off the decoding thread, and swapped in.

LoRA-family adapters live in one peft model (lora_batching.py routes rows through its layers); IA3,
bottleneck adapters and prefix/prompt tuning are applied by the engine's own code (ia3.py,
bottleneck_rows.py, virtual_tokens.py). Rows of every method mix in one batch: each applies per row.

More adapters can be registered (`max_adapters`) than held in memory (`max_resident`): a load verifies the
files and keeps the weights only while a slot is free (or the adapter is pinned); a request for one that is
not resident loads it first (`hold`, a cold load), evicting the least recently used adapter that is neither
pinned nor in use, and waits at most `resident_wait_s` for one to become free. Replaced adapters whose last
rows are still generating keep their weights a little beyond the bound, until those rows finish.

Each load (and each cold load) gets a fresh internal adapter name. Replacing or unloading an adapter takes its public name
away at once (new requests see the new version, or a 404), while rows already generating with the old weights
finish with them; the old weights are dropped when their last row releases them.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..common.errors import (
    AdapterCorrupt,
    AdapterNotFound,
    ModelNotFound,
    NameConflict,
    ResidentSlotsBusy,
    ServingError,
    TooManyAdapters,
)
from .adapters import BaseModelInfo, PreparedAdapter, prepare_adapter
from .bottleneck_rows import BottleneckAdapter, BottleneckRows
from .ia3 import Ia3Rows, Ia3Vectors
from .lora_batching import BASE_ROW, RowAdapters, install, refresh
from .lora_swap import LoraShape, swappable_shape, take_over
from .virtual_tokens import VirtualTokens, embed_with_soft_prompts

log = logging.getLogger(__name__)


@dataclass
class LoadedAdapter:
    name: str
    internal: str
    path: Path
    method: str
    rank: int
    digest: str | None
    size_bytes: int
    loaded_at: float
    pinned: bool = False
    resident: bool = True  # weights in memory; False once evicted (the files stay registered)
    last_used: float = 0.0  # time.monotonic() of the last request; the eviction order
    resident_since: float = field(default_factory=time.monotonic)
    users: int = 0  # rows generating with these weights
    holds: int = 0  # requests that need it resident (from admission to their last token)
    retired: bool = False
    shape: LoraShape | None = None  # plain LoRA: a cold load of the same shape may take over its tensors


@dataclass(frozen=True)
class LoadOutcome:
    status: str  # loaded | unchanged | replaced
    adapter: LoadedAdapter
    seconds: float


class AdapterRegistry:
    def __init__(
        self,
        model: Any,
        base: BaseModelInfo,
        *,
        max_adapters: int,
        max_rank: int,
        device: str,
        max_resident: int | None = None,
        resident_wait_s: float = 30.0,
        on_change: Callable[[], None] | None = None,
        on_cold_load: Callable[[str, float], None] | None = None,
        on_leave_memory: Callable[[str, float, bool], None] | None = None,
    ) -> None:
        self.model = model
        self.base = base
        self.max_adapters = max_adapters
        self.max_resident = min(max_resident or max_adapters, max_adapters)
        self.resident_wait_s = resident_wait_s
        self.max_rank = max_rank
        self.device = device
        self.model_lock = threading.RLock()
        self._admin = threading.Lock()
        self._state = threading.Lock()
        self._room = threading.Condition(self._state)  # notified when a request or row lets go of an adapter
        self._peft: Any = None  # a PeftModel, created by the first load
        self._lora_layers: dict[str, Any] | None = None  # its LoRA layers by module path (None: look again)
        self._by_name: dict[str, LoadedAdapter] = {}
        self._retired: dict[str, LoadedAdapter] = {}
        self._ids = itertools.count(1)
        self._committed: frozenset[str] = frozenset()  # internal names the layers' stacks include
        self._dropper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adapter-drop")
        self._rows = RowAdapters()  # each row's adapter, read by the adapter layers during a forward
        self._ia3 = Ia3Rows(model, self._rows)
        self._bottleneck = BottleneckRows(model, self._rows)
        self._virtual: dict[str, VirtualTokens] = {}  # prefix/prompt tuning; replaced, never changed in place
        self._on_change = on_change or (lambda: None)
        self._on_cold_load = on_cold_load or (lambda name, seconds: None)
        # (name, seconds it was resident, evicted?) when an adapter's weights leave memory
        self._on_leave_memory = on_leave_memory or (lambda name, seconds, evicted: None)

    # ------------------------------------------------------------------------------------ queries

    def adapters(self) -> list[LoadedAdapter]:
        with self._state:
            return sorted(self._by_name.values(), key=lambda a: a.name)

    def count(self) -> int:
        with self._state:
            return len(self._by_name)

    def resident_count(self) -> int:
        with self._state:
            return sum(a.resident for a in self._by_name.values())

    def check_model(self, model: str | None) -> str | None:
        """The adapter name a request's `model` selects (None for the base model), or ModelNotFound."""
        if model is None or model == self.base.served_name:
            return None
        with self._state:
            if model in self._by_name:
                return model
        raise ModelNotFound(
            f"model '{model}' is neither the base model '{self.base.served_name}' nor a loaded adapter; "
            "GET /v1/models lists what this server has"
        )

    def acquire(self, name: str | None) -> str | None:
        """Pin the current version of adapter `name` for one row; returns its internal name (None = base)."""
        if name is None:
            return None
        with self._state:
            adapter = self._by_name.get(name)
            if adapter is None:
                raise ModelNotFound(f"adapter '{name}' was unloaded")
            if not adapter.resident:  # only for callers that skipped `hold`
                raise ResidentSlotsBusy(f"adapter '{name}' is not in memory; requests load it through hold()")
            adapter.users += 1
            adapter.last_used = time.monotonic()
            return adapter.internal

    def virtual_tokens(self, internal: str | None) -> VirtualTokens | None:
        """The prefix or soft prompt a row's prefill needs (prefix or prompt tuning), else None."""
        return self._virtual.get(internal) if internal is not None else None

    def release(self, internal: str | None) -> None:
        if internal is None:
            return
        with self._state:
            adapter = self._retired.get(internal) or next(
                (a for a in self._by_name.values() if a.internal == internal), None
            )
            if adapter is None:
                return
            adapter.users -= 1
            drop = adapter.retired and adapter.users == 0
            if drop:
                del self._retired[internal]
            self._room.notify_all()
        if drop:  # not on the generation thread: dropping waits for the admin lock and rebuilds stacks
            self._dropper.submit(self._drop_retired, internal)

    def _drop_retired(self, internal: str) -> None:
        with self._admin:
            self._detach(internal)

    # ------------------------------------------------------------------------------------ changes

    def load(self, name: str, path: Path, *, pinned: bool = False) -> LoadOutcome:
        """Verify and register an adapter. It takes a memory slot if one is free (a replacement takes its
        predecessor's); a pinned one makes room by evicting; the others wait for their first request."""
        started = time.perf_counter()
        with self._admin:
            if name == self.base.served_name:
                raise NameConflict(f"'{name}' is the base model's served name; give the adapter another name")
            with self._state:
                current = self._by_name.get(name)
                count = len(self._by_name)
            if current is not None and current.path == path and current.pinned == pinned:
                return LoadOutcome("unchanged", current, time.perf_counter() - started)
            if current is None and count >= self.max_adapters:
                raise TooManyAdapters(
                    f"{count} adapters are loaded, the server's maxAdapters: unload one or raise limits.maxAdapters"
                )
            prepared = prepare_adapter(name, path, self.base, max_rank=self.max_rank, device=self.device)
            if current is not None and current.resident:
                resident = True
            elif pinned:
                self._make_room(for_pinned=True)
                resident = True
            else:
                resident = self.resident_count() < self.max_resident
            internal = f"adapter_{next(self._ids)}"
            if resident:
                self._attach(internal, prepared)
            adapter = LoadedAdapter(
                name=name,
                internal=internal,
                path=path,
                method=prepared.method,
                rank=prepared.rank,
                digest=prepared.digest,
                size_bytes=prepared.size_bytes,
                loaded_at=time.time(),
                pinned=pinned,
                resident=resident,
                last_used=time.monotonic(),
                shape=swappable_shape(prepared),
            )
            with self._state:
                if current is not None:  # requests admitted for the old version now need the new one
                    adapter.holds, current.holds = current.holds, 0
                self._by_name[name] = adapter
            if current is not None and current.resident:
                self._on_leave_memory(name, time.monotonic() - current.resident_since, False)
                self._retire(current)
        self._on_change()
        seconds = time.perf_counter() - started
        log.info("Loaded adapter %s from %s in %.0f ms", name, path, seconds * 1000)
        return LoadOutcome("replaced" if current else "loaded", adapter, seconds)

    def unload(self, name: str) -> LoadedAdapter:
        with self._admin:
            with self._state:
                adapter = self._by_name.pop(name, None)
            if adapter is None:
                raise AdapterNotFound(f"no adapter named '{name}' is loaded")
            if adapter.resident:
                self._on_leave_memory(name, time.monotonic() - adapter.resident_since, False)
                self._retire(adapter)
        self._on_change()
        log.info("Unloaded adapter %s", name)
        return adapter

    def hold(self, name: str) -> None:
        """Keep adapter `name` in memory for one request (until `unhold`), loading it first when it is not
        resident: a cold load, which evicts the least recently used adapter that is neither pinned nor in use
        and waits at most `resident_wait_s` for one. Blocks: call it off the event loop."""
        started = time.perf_counter()
        while not self._hold_if_resident(name):
            with self._state:
                adapter = self._by_name.get(name)
            if adapter is None:
                raise ModelNotFound(f"adapter '{name}' was unloaded")
            # Reading and checking files needs no lock: cold loads of different adapters read in parallel.
            prepared = prepare_adapter(name, adapter.path, self.base, max_rank=self.max_rank, device=self.device)
            if prepared.digest != adapter.digest:
                raise AdapterCorrupt(f"adapter '{name}' changed on disk since it was loaded: load it again")
            with self._admin:
                with self._state:
                    current = self._by_name.get(name)
                if current is not adapter or adapter.resident:
                    continue  # replaced, unloaded or brought in by another request meanwhile: look again
                shape = swappable_shape(prepared)
                internal = self._make_room(for_pinned=False, reuse=shape)
                if internal is not None:
                    take_over(self._layers(), internal, prepared.weights)
                else:
                    internal = f"adapter_{next(self._ids)}"
                    self._attach(internal, prepared)
                with self._state:
                    adapter.internal, adapter.resident = internal, True
                    adapter.resident_since = time.monotonic()
                    adapter.holds += 1
                    adapter.last_used = time.monotonic()
                break
        else:
            return
        self._on_cold_load(name, time.perf_counter() - started)
        self._on_change()
        log.info("Cold-loaded adapter %s in %.0f ms", name, (time.perf_counter() - started) * 1000)

    def unhold(self, name: str) -> None:
        with self._state:
            adapter = self._by_name.get(name)
            if adapter is not None and adapter.holds > 0:
                adapter.holds -= 1
                self._room.notify_all()

    def _hold_if_resident(self, name: str) -> bool:
        with self._state:
            adapter = self._by_name.get(name)
            if adapter is None or not adapter.resident:
                return False
            adapter.holds += 1
            adapter.last_used = time.monotonic()
            return True

    def _make_room(self, *, for_pinned: bool, reuse: LoraShape | None = None) -> str | None:
        """Evict least recently used idle, unpinned adapters until one more fits (caller holds `_admin`).
        When the evicted one has the shape `reuse`, its weights stay attached and its internal name is
        returned for the incoming adapter to take over (lora_swap.py); else None."""
        deadline = time.monotonic() + self.resident_wait_s
        while True:
            with self._state:
                resident = [a for a in self._by_name.values() if a.resident]
                if len(resident) < self.max_resident:
                    return None
                if for_pinned and all(a.pinned for a in resident):
                    raise TooManyAdapters(
                        f"all {self.max_resident} memory slots (maxResident) hold pinned adapters: "
                        "unpin one or raise limits.maxResident"
                    )
                idle = [a for a in resident if not a.pinned and a.holds == 0 and a.users == 0]
                if not idle:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise ResidentSlotsBusy(
                            f"all {self.max_resident} resident adapters stayed pinned or in use for "
                            f"{self.resident_wait_s:.0f} s: retry, or raise limits.maxResident"
                        )
                    self._room.wait(remaining)
                    continue
                victim = min(idle, key=lambda a: a.last_used)
                # Its internal name leaves with its weights: rows find their adapter by that name (release).
                internal, victim.internal, victim.resident = victim.internal, "", False
            self._on_leave_memory(victim.name, time.monotonic() - victim.resident_since, True)
            if reuse is not None and victim.shape == reuse:
                return internal
            self._detach(internal)
            log.info("Evicted adapter %s (least recently used) to make room", victim.name)

    def _retire(self, adapter: LoadedAdapter) -> None:
        with self._state:
            adapter.retired = True
            busy = adapter.users > 0
            if busy:
                self._retired[adapter.internal] = adapter
        if not busy:
            self._detach(adapter.internal)

    def _attach(self, internal: str, prepared: PreparedAdapter) -> None:
        """Add the adapter's weights to the model (caller holds `_admin`)."""
        own = prepared.own
        if own is None:
            self._attach_lora(internal, prepared)
        elif isinstance(own, Ia3Vectors):
            with self.model_lock if self._ia3.needs_hooks(own) else contextlib.nullcontext():
                self._ia3.add(internal, own)
        elif isinstance(own, BottleneckAdapter):
            self._bottleneck.check(prepared.name, own)
            with self.model_lock if self._bottleneck.needs_hooks(own) else contextlib.nullcontext():
                self._bottleneck.add(internal, own)
        else:
            self._virtual = {**self._virtual, internal: own}

    def _attach_lora(self, internal: str, prepared: PreparedAdapter) -> None:
        from peft import get_peft_model
        from peft.utils import set_peft_model_state_dict

        self._lora_layers = None  # peft may wrap new modules
        lock = self.model_lock if self._adds_layers(prepared) else contextlib.nullcontext()
        with lock:
            try:
                if self._peft is None:
                    self._peft = get_peft_model(
                        self.model, prepared.config, adapter_name=internal, low_cpu_mem_usage=True
                    )
                else:
                    self._peft.add_adapter(internal, prepared.config, low_cpu_mem_usage=True)
                result: Any = set_peft_model_state_dict(
                    self._peft, prepared.weights, adapter_name=internal, low_cpu_mem_usage=True
                )
                missing = [k for k in result.missing_keys if f".{internal}" in k]
                if missing:
                    raise AdapterCorrupt(f"adapter '{prepared.name}' lacks weights for {', '.join(missing[:3])}")
                _allow_mixed_batches(self._peft, internal)
                install(self._peft, self._rows)
                self._keep_an_active_adapter()
                self._peft.eval()
            except Exception as error:
                self._detach(internal)
                if self._peft is not None:
                    install(self._peft, self._rows)  # layers peft created before it failed: route them too
                if isinstance(error, ServingError):
                    raise
                raise AdapterCorrupt(f"cannot load adapter '{prepared.name}' into the model: {error}") from error
        refresh(self._peft, self._committed | {internal})
        self._committed |= {internal}

    def _layers(self) -> dict[str, Any]:
        from peft.tuners.lora import LoraLayer

        if self._lora_layers is None:
            self._lora_layers = {n: m for n, m in self._peft.named_modules() if isinstance(m, LoraLayer)}
        return self._lora_layers

    def _adds_layers(self, prepared: PreparedAdapter) -> bool:
        """True when peft would have to wrap a module that no loaded adapter has wrapped yet."""
        from peft.tuners.lora import LoraLayer
        from peft.tuners.tuners_utils import check_target_module_exists
        from peft.utils.other import AuxiliaryTrainingWrapper

        if self._peft is None or prepared.config.target_modules is None:
            return True
        config = prepared.config
        saved = set(config.modules_to_save or []) | set((config.trainable_token_indices or {}).keys())
        inside_a_wrapper = (".base_layer", "lora_", "original_module", "modules_to_save", "token_adapter")
        for name, module in self.model.named_modules():
            if not name or isinstance(module, (LoraLayer, AuxiliaryTrainingWrapper)):
                continue
            if any(part in name for part in inside_a_wrapper):
                continue
            if check_target_module_exists(config, name) or name.rsplit(".", 1)[-1] in saved:
                return True
        return False

    def _detach(self, internal: str) -> None:
        """Remove the adapter's weights (caller holds `_admin`; no row uses them any more)."""
        self._ia3.remove(internal)
        self._bottleneck.remove(internal)
        self._virtual = {name: tokens for name, tokens in self._virtual.items() if name != internal}
        if self._peft is None:
            return
        refresh(self._peft, self._committed - {internal})  # rows no longer use it: forget it first
        self._committed -= {internal}
        with self.model_lock, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peft warns when the deleted adapter was the active one
            if internal in self._peft.peft_config:
                self._peft.delete_adapter(internal)
                self._keep_an_active_adapter()

    def _keep_an_active_adapter(self) -> None:
        """Keep peft's notion of an active adapter pointing at a loaded one: add_adapter fails without one
        once modules_to_save wrappers exist (rows always name their adapters, so which one does not matter)."""
        config = self._peft.peft_config
        if config and self._peft.active_adapter not in config:
            self._peft.set_adapter(next(iter(config)), inference_mode=True)

    # ------------------------------------------------------------------------------------ inference

    @torch.inference_mode()
    def forward(
        self, rows: list[str | None], soft_prompts: list[tuple[int, int, torch.Tensor]] | None = None, **inputs: Any
    ) -> torch.Tensor:
        """Logits of the last position, one row per entry of `rows` (internal adapter names, None = base).
        `soft_prompts` (prefill only): (row, column, embeddings) written over input_ids' placeholders.

        The adapter layers and hooks read the rows' names from `_rows` (see lora_batching.py), so this calls
        the model itself rather than PeftModel.forward and its per-call hooks."""
        with self.model_lock:
            self._rows.names = [internal or BASE_ROW for internal in rows]
            try:
                if soft_prompts:
                    inputs["inputs_embeds"] = embed_with_soft_prompts(self.model, inputs.pop("input_ids"), soft_prompts)
                output = self.model(**inputs, use_cache=True, logits_to_keep=1)
            finally:
                self._rows.names = None
        logits: torch.Tensor = output.logits[:, -1, :]
        return logits


def _allow_mixed_batches(peft_model: Any, internal: str) -> None:
    """Let a DoRA adapter share a batch with others.

    peft 0.21 refuses `adapter_names` as soon as one adapter in the batch uses DoRA (LoraLayer._check_forward_args
    reads `use_dora`), although its mixed-batch path applies the DoRA variant (`lora_variant`) to that adapter's
    rows exactly as its single-adapter path does. Clearing the flag lifts only that check; the variant still
    does the work. tests/runtime/test_server.py compares DoRA rows in mixed batches with peft's own
    single-adapter generate, so a peft change that breaks this shows up there.
    """
    from peft.tuners.lora import LoraLayer

    for module in peft_model.modules():
        if isinstance(module, LoraLayer) and module.use_dora.get(internal):
            module.use_dora[internal] = False
