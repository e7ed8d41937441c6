"""Operator-side checks that need context the CRD schema cannot have (the pydantic models run first)."""

from __future__ import annotations

from ..api import FineTuneJob
from ..api.methods import METHODS
from ..local_only import local_only_problems


def cluster_problems(job: FineTuneJob) -> list[str]:
    """What stops this job from running in a cluster, one 'field: message' line per problem."""
    spec = job.spec
    problems = local_only_problems(
        {
            "spec.baseModel.uri": spec.base_model.uri,
            "spec.dataset.uri": spec.dataset.uri,
            "spec.output.uri": spec.output.uri,
        }
    )
    if METHODS[spec.method.type].needs_gpu and spec.resources.gpus == 0:
        method = spec.method.type.value
        problems.append(f"spec.resources.gpus: {method} needs a GPU in a cluster (bitsandbytes 4-bit); request gpus: 1")
    return problems
