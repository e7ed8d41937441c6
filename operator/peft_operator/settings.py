"""Operator configuration, read once from the environment (the Helm chart sets these)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

DEFAULT_RUNTIME_IMAGE = "ghcr.io/peft-operator/runtime:0.1.0"
# PEFT_PREFLIGHT: "gpu" runs the CPU-only preflight Job before every training Job that requests GPUs;
# "off" runs none (the trainer still checks everything first, inside the GPU pod).
PREFLIGHT_MODES = ("gpu", "off")


@dataclass(frozen=True)
class OperatorSettings:
    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    image_pull_policy: str = "IfNotPresent"
    # Base URL the trainer pods POST progress to (the operator's Service); empty disables the HTTP sink.
    progress_url: str = ""
    # Key that signs per-job progress tokens (HMAC), so no token has to be stored by the operator.
    progress_key: bytes = b""
    watch_namespaces: tuple[str, ...] = field(default_factory=tuple)
    progress_port: int = 8080
    metrics_port: int = 9090
    # The runtime image's user (trainer-image/Dockerfile); pods run as it, never as root.
    trainer_run_as_user: int = 10001
    # Namespace of the Lease that elects one acting replica; empty runs without election (one replica).
    leader_election_namespace: str = ""
    lease_name: str = "peft-operator"
    preflight_gpu_jobs: bool = True

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> OperatorSettings:
        env = dict(os.environ if env is None else env)
        namespaces = tuple(ns.strip() for ns in env.get("PEFT_WATCH_NAMESPACES", "").split(",") if ns.strip())
        preflight = env.get("PEFT_PREFLIGHT", "gpu")
        if preflight not in PREFLIGHT_MODES:
            raise ValueError(f"PEFT_PREFLIGHT is '{preflight}'; set it to one of {', '.join(PREFLIGHT_MODES)}")
        return cls(
            runtime_image=env.get("PEFT_RUNTIME_IMAGE", DEFAULT_RUNTIME_IMAGE),
            image_pull_policy=env.get("PEFT_IMAGE_PULL_POLICY", "IfNotPresent"),
            progress_url=env.get("PEFT_PROGRESS_URL", "").rstrip("/"),
            progress_key=env.get("PEFT_PROGRESS_KEY", "").encode(),
            watch_namespaces=namespaces,
            progress_port=int(env.get("PEFT_PROGRESS_PORT", "8080")),
            metrics_port=int(env.get("PEFT_METRICS_PORT", "9090")),
            leader_election_namespace=env.get("PEFT_LEADER_ELECTION_NAMESPACE", ""),
            lease_name=env.get("PEFT_LEASE_NAME", "peft-operator"),
            preflight_gpu_jobs=preflight == "gpu",
        )
