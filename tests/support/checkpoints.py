"""What a trainer's output holds, read from outside as a user would: its complete checkpoints."""

from __future__ import annotations

from pathlib import Path


def complete_steps(output: Path) -> list[int]:
    """Steps of the complete checkpoints under `output` (the trainer writes each one's COMPLETE marker last)."""
    return sorted(int(p.parent.name.removeprefix("step-")) for p in output.glob("checkpoints/step-*/COMPLETE"))
