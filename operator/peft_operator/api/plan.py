"""The training plan: what the operator renders into a ConfigMap and the trainer reads once at start.

It is the FineTuneJob spec plus where things are inside the pod; nothing in it is secret (credentials
reach the pod as environment variables from Secret references, never through the plan)."""

from __future__ import annotations

from pydantic import Field

from .base import ApiModel
from .finetunejob import FineTuneJobSpec

PLAN_FILE_NAME = "plan.json"
# Where the Job's volumes appear in the trainer pod; local mode leaves them unset.
PVC_MOUNT_ROOT = "/mnt/pvc"
# Each credentials Secret reaches the pod under its own prefix (envFrom prefix), so a model bucket, a
# dataset bucket and an output bucket may use different credentials: e.g. DATASET_AWS_ACCESS_KEY_ID.
MODEL_CREDENTIALS_PREFIX = "MODEL_"
DATASET_CREDENTIALS_PREFIX = "DATASET_"
OUTPUT_CREDENTIALS_PREFIX = "OUTPUT_"
CONFIGMAP_MOUNT_ROOT = "/mnt/configmap"


class JobIdentity(ApiModel):
    """Which FineTuneJob the plan belongs to."""

    name: str = Field(description="FineTuneJob name.")
    namespace: str | None = Field(default=None, description="FineTuneJob namespace (unset in local mode).")
    uid: str | None = Field(default=None, description="FineTuneJob UID (unset in local mode).")


class Mounts(ApiModel):
    """How cluster storage appears on the trainer's file system."""

    pvc_root: str | None = Field(
        default=None, description="pvc://claim/path is read at <pvcRoot>/claim/path (claims mounted by name)."
    )
    configmap_root: str | None = Field(
        default=None, description="configmap://name/key is read at <configmapRoot>/name/key."
    )
    local_models: dict[str, str] = Field(
        default_factory=dict,
        description="Local mode (no hub): base model URI -> folder holding that model. The URI stays what the "
        "job named, so the adapter's manifest records it and agents configured with it accept the adapter.",
    )


class ProgressSinkConfig(ApiModel):
    """Where the trainer reports; the token for the HTTP sink comes from the environment, not the plan."""

    url: str | None = Field(default=None, description="HTTP endpoint the trainer POSTs TrainerEvents to.")
    token_env: str = Field(default="PEFT_PROGRESS_TOKEN", description="Environment variable with the bearer token.")
    file: str | None = Field(default=None, description="Also append every event as a JSON line to this file.")
    termination_log: str | None = Field(
        default=None, description="Write the final event here (Kubernetes: /dev/termination-log)."
    )
    interval_seconds: float = Field(default=5.0, gt=0, description="At most one progress POST per interval.")


class TrainingPlan(ApiModel):
    """Everything the trainer needs, rendered from one FineTuneJob."""

    job: JobIdentity
    spec: FineTuneJobSpec
    mounts: Mounts = Field(default_factory=Mounts)
    progress: ProgressSinkConfig = Field(default_factory=ProgressSinkConfig)
    work_dir: str = Field(default="/tmp/peft-work", description="Scratch space for downloads and caches.")
