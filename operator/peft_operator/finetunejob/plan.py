"""Render the training plan (what the trainer reads) and the ConfigMap that carries it."""

from __future__ import annotations

from typing import Any

from ..api import FineTuneJob
from ..api.plan import (
    CONFIGMAP_MOUNT_ROOT,
    PLAN_FILE_NAME,
    PVC_MOUNT_ROOT,
    JobIdentity,
    Mounts,
    ProgressSinkConfig,
    TrainingPlan,
)
from ..naming import finetunejob_labels, plan_configmap_name
from ..pods import owned_metadata
from ..settings import OperatorSettings

TERMINATION_LOG = "/dev/termination-log"
WORK_DIR = "/tmp/peft-work"


def render_training_plan(job: FineTuneJob, settings: OperatorSettings) -> TrainingPlan:
    meta = job.metadata
    assert meta.name is not None and meta.namespace is not None
    progress_url = (
        f"{settings.progress_url}/v1/progress/{meta.namespace}/{meta.name}" if settings.progress_url else None
    )
    return TrainingPlan(
        job=JobIdentity(name=meta.name, namespace=meta.namespace, uid=meta.uid),
        spec=job.spec,
        mounts=Mounts(pvc_root=PVC_MOUNT_ROOT, configmap_root=CONFIGMAP_MOUNT_ROOT),
        progress=ProgressSinkConfig(url=progress_url, termination_log=TERMINATION_LOG),
        work_dir=WORK_DIR,
    )


def render_plan_configmap(job: FineTuneJob, settings: OperatorSettings) -> dict[str, Any]:
    assert job.metadata.name is not None
    plan = render_training_plan(job, settings)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": owned_metadata(
            FineTuneJob.KIND,
            job.metadata,
            plan_configmap_name(job.metadata.name),
            finetunejob_labels(job.metadata.name),
        ),
        "data": {PLAN_FILE_NAME: plan.model_dump_json(by_alias=True, exclude_none=True, indent=2)},
    }
