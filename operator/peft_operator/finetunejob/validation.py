"""Operator-side checks that need context the CRD schema cannot have (the pydantic models run first)."""

from __future__ import annotations

from ..api import FineTuneJob
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
    if spec.method.type.value == "qlora" and spec.resources.gpus == 0:
        problems.append("spec.resources.gpus: qlora needs a GPU in a cluster (bitsandbytes 4-bit); request gpus: 1")
    return problems
