"""Host memory: hand freed tensor memory back to the operating system (glibc's malloc; a no-op elsewhere).

glibc raises its mmap threshold every time a large block is freed (up to 32 MiB); after that, blocks of a
few MiB (QLoRA's dequantized weights, made anew in every forward on CPU; activations) come from the heap,
where freed space fragments and is never returned. Training SmolLM2 on CPU, that kept 0.6 to 1.2 GB of
freed memory resident at the peak, a different amount every run. A fixed 2 MiB threshold maps such blocks
and unmaps them when freed: the peak is what tensors really use, for 20-30% more time per CPU step (page
faults). Figures: docs/trainer.md, *Memory*.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc

M_MMAP_THRESHOLD = -3  # mallopt(3) parameter; setting it also turns off the dynamic adjustment
MMAP_THRESHOLD_BYTES = 2 << 20


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt  # noqa: B018  (absent outside glibc)
        return libc
    except (OSError, AttributeError):
        return None


def map_large_blocks() -> bool:
    """Serve allocations of 2 MiB and more from their own mappings, returned to the OS when freed."""
    libc = _glibc()
    return bool(libc and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def release_freed_memory() -> None:
    """Hand the heap's free pages back now."""
    gc.collect()
    libc = _glibc()
    if libc is not None:
        with contextlib.suppress(AttributeError):
            libc.malloc_trim(0)
