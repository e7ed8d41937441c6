"""Render the batch/v1 Job that runs the trainer for one FineTuneJob (a pure function of spec and settings)."""

from __future__ import annotations

from typing import Any

from ..api import FineTuneJob, Scheme, StorageUri, parse_uri
from ..api.events import PERMANENT_FAILURE_EXIT_CODE
from ..api.finetunejob import Resources, duration_seconds
from ..api.plan import (
    CONFIGMAP_MOUNT_ROOT,
    DATASET_CREDENTIALS_PREFIX,
    MODEL_CREDENTIALS_PREFIX,
    OUTPUT_CREDENTIALS_PREFIX,
    PLAN_FILE_NAME,
    PVC_MOUNT_ROOT,
)
from ..naming import (
    KUEUE_PRIORITY_LABEL,
    KUEUE_QUEUE_LABEL,
    TRAINER_CONTAINER,
    finetunejob_labels,
    plan_configmap_name,
    preflight_job_name,
    progress_secret_name,
    training_job_name,
)
from ..pods import container_resources, container_security_context, owned_metadata, pod_spec
from ..settings import OperatorSettings
from .plan import WORK_DIR

PLAN_DIR = "/etc/peft/plan"
# On SIGTERM the trainer finishes (or drops) its step and writes a checkpoint before it exits; the
# default 30 s can end a slow GPU step or an S3 upload early, which costs the work since the last one.
TERMINATION_GRACE_SECONDS = 120
# The preflight's own retries: a model or dataset download that failed once may work the second time.
PREFLIGHT_BACKOFF_LIMIT = 2
# Multi-node: torchrun's c10d rendezvous, hosted by pod 0, on this port of the headless Service.
RENDEZVOUS_PORT = 29400
# How often torchrun restarts the group within one pod's life: each time a peer pod is replaced or a rank
# dies, the survivors' workers stop and rendezvous again with the replacement, from the newest checkpoint.
RENDEZVOUS_RESTARTS = 5
# The init container's bound on waiting for pod 0's DNS record (it fails the pod's attempt after that).
RENDEZVOUS_WAIT_SECONDS = 600
# How long the pods that started wait in the rendezvous for the others (torchrun's default is 600 s): the
# scheduler may place the pods of a large job minutes apart, and a pod whose wait ends fails a Job attempt.
RENDEZVOUS_JOIN_SECONDS = 1800


def _volume_name(kind: str, name: str) -> str:
    return f"{kind}-{name}"[:63].rstrip("-.")


def storage_uris(job: FineTuneJob) -> list[tuple[StorageUri, bool]]:
    """The base model's, the dataset's and the output's URI, each with whether the trainer writes there."""
    spec = job.spec
    return [
        (parse_uri(spec.base_model.uri), False),
        (parse_uri(spec.dataset.uri), False),
        (parse_uri(spec.output.uri), True),
    ]


def _storage_volumes(job: FineTuneJob) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Volumes and mounts for every pvc:// and configmap:// URI; only the output is writable."""
    volumes: dict[str, dict[str, Any]] = {}
    writable: dict[str, bool] = {}
    mounts: dict[str, dict[str, Any]] = {}
    for parsed, is_output in storage_uris(job):
        if parsed.scheme is Scheme.PVC:
            name = _volume_name("pvc", parsed.authority)
            volumes[name] = {"name": name, "persistentVolumeClaim": {"claimName": parsed.authority}}
            writable[name] = writable.get(name, False) or is_output
            mounts[name] = {"name": name, "mountPath": f"{PVC_MOUNT_ROOT}/{parsed.authority}"}
        elif parsed.scheme is Scheme.CONFIGMAP:
            name = _volume_name("cm", parsed.authority)
            volumes[name] = {"name": name, "configMap": {"name": parsed.authority}}
            mounts[name] = {"name": name, "mountPath": f"{CONFIGMAP_MOUNT_ROOT}/{parsed.authority}"}
    for name, mount in mounts.items():
        mount["readOnly"] = not writable.get(name, False)
        if "persistentVolumeClaim" in volumes[name]:
            volumes[name]["persistentVolumeClaim"]["readOnly"] = not writable[name]
    return list(volumes.values()), list(mounts.values())


def _env(job: FineTuneJob, settings: OperatorSettings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    spec = job.spec
    assert job.metadata.name is not None
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": WORK_DIR},
        {"name": "HF_HOME", "value": f"{WORK_DIR}/hf"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if settings.progress_url:
        secret = progress_secret_name(job.metadata.name)
        env.append({"name": "PEFT_PROGRESS_TOKEN", "valueFrom": {"secretKeyRef": {"name": secret, "key": "token"}}})
    token_ref = spec.base_model.token_secret_ref
    if token_ref is not None:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": token_ref.name, "key": token_ref.key}}})
    sources = (
        (MODEL_CREDENTIALS_PREFIX, spec.base_model.credentials_secret_ref),
        (DATASET_CREDENTIALS_PREFIX, spec.dataset.credentials_secret_ref),
        (OUTPUT_CREDENTIALS_PREFIX, spec.output.credentials_secret_ref),
    )
    env_from = [{"prefix": prefix, "secretRef": {"name": ref.name}} for prefix, ref in sources if ref is not None]
    return env, env_from


def _pod_failure_policy() -> dict[str, Any]:
    return {
        "rules": [
            # The trainer exits with this code when retrying cannot help (bad data, bad configuration).
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": TRAINER_CONTAINER,
                    "operator": "In",
                    "values": [PERMANENT_FAILURE_EXIT_CODE],
                },
            },
            # Preemption, eviction and node drains are not the job's fault: retry without counting.
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


def render_training_job(job: FineTuneJob, settings: OperatorSettings) -> dict[str, Any]:
    """The Job that trains: the GPUs, the Kueue queue, the run policy's limits."""
    meta, spec = job.metadata, job.spec
    assert meta.name is not None
    job_labels = finetunejob_labels(meta.name)
    if spec.queue is not None:
        job_labels[KUEUE_QUEUE_LABEL] = spec.queue.name
        if spec.queue.priority_class is not None:
            job_labels[KUEUE_PRIORITY_LABEL] = spec.queue.priority_class
    return _runtime_job(
        job,
        settings,
        name=training_job_name(meta.name),
        job_labels=job_labels,
        subcommand="train",
        resources=spec.resources,
        suspend=spec.queue is not None,  # Kueue admits a queued Job by unsuspending it
        backoff_limit=spec.run_policy.backoff_limit,
    )


def rendezvous_host(finetunejob: str) -> str:
    """Pod 0 of the Indexed training Job, by the hostname the Job gives it under its headless Service."""
    return f"{training_job_name(finetunejob)}-0.{training_job_name(finetunejob)}"


def render_trainer_service(job: FineTuneJob) -> dict[str, Any]:
    """The headless Service that names a multi-node Job's pods (`<job>-<index>.<service>`): DNS records exist
    before the pods are ready, since the rendezvous comes before any readiness."""
    meta = job.metadata
    assert meta.name is not None
    name = training_job_name(meta.name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": owned_metadata(FineTuneJob.KIND, meta, name, finetunejob_labels(meta.name)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": finetunejob_labels(meta.name, "trainer"),
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}],
        },
    }


def needs_preflight(job: FineTuneJob, settings: OperatorSettings) -> bool:
    """The CPU-only preflight step runs before jobs that request GPUs or several nodes: there it saves the
    allocation (and the queue wait before it) when the data, tokenizer or target modules are wrong, and on
    several nodes torchrun would also restart the group on such an error before the pod fails. A CPU-only
    job on one pod would pay a second pod start and a second dataset read for a check its own first minute
    already makes."""
    resources = job.spec.resources
    return settings.preflight_gpu_jobs and (resources.gpus > 0 or resources.nodes > 1)


def render_preflight_job(job: FineTuneJob, settings: OperatorSettings) -> dict[str, Any]:
    """The Job that runs `peft-runtime preflight` on the same plan, volumes and credentials as the training
    Job, with no GPU requested, not queued (it must not wait behind GPU jobs), and the user's CPU and memory
    (a dataset is tokenized whole) and scheduling (claims may be zonal)."""
    assert job.metadata.name is not None
    name = job.metadata.name
    return _runtime_job(
        job,
        settings,
        name=preflight_job_name(name),
        job_labels=finetunejob_labels(name, "preflight"),
        subcommand="preflight",
        resources=job.spec.resources.model_copy(update={"gpus": 0, "nodes": 1}),
        suspend=False,
        backoff_limit=PREFLIGHT_BACKOFF_LIMIT,
    )


def _runtime_job(
    job: FineTuneJob,
    settings: OperatorSettings,
    *,
    name: str,
    job_labels: dict[str, str],
    subcommand: str,
    resources: Resources,
    suspend: bool,
    backoff_limit: int,
) -> dict[str, Any]:
    """A Job whose pod (one per node) runs `peft-runtime <subcommand> --plan` on the job's plan."""
    meta, spec = job.metadata, job.spec
    assert meta.name is not None
    pod_labels = {k: v for k, v in job_labels.items() if not k.startswith("kueue.x-k8s.io/")}
    volumes, mounts = _storage_volumes(job)
    env, env_from = _env(job, settings)
    if resources.nodes > 1:
        # With the rendezvous store shared with the workers (torch's default), an agent that was rank 0
        # before keeps its old MASTER_ADDR and never writes it into the next round, where a replacement pod
        # waits for it until it times out: each round then publishes its own.
        env.append({"name": "TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "value": "1"})
    container: dict[str, Any] = {
        "name": TRAINER_CONTAINER,
        "image": settings.runtime_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": _trainer_command(job, subcommand, resources),
        "env": env,
        "resources": container_resources(resources),
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "plan", "mountPath": PLAN_DIR, "readOnly": True},
            {"name": "work", "mountPath": WORK_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
            *mounts,
        ],
    }
    if env_from:
        container["envFrom"] = env_from
    pod_volumes: list[dict[str, Any]] = [
        {"name": "plan", "configMap": {"name": plan_configmap_name(meta.name)}},
        {"name": "work", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
        *volumes,
    ]
    pod = pod_spec(
        [container],
        pod_volumes,
        resources,
        settings.trainer_run_as_user,
        restartPolicy="Never",
        terminationGracePeriodSeconds=TERMINATION_GRACE_SECONDS,
    )
    job_spec: dict[str, Any] = {
        "suspend": suspend,
        "backoffLimit": backoff_limit,
        "activeDeadlineSeconds": duration_seconds(spec.run_policy.max_runtime),
        "podFailurePolicy": _pod_failure_policy(),
        "template": {"metadata": {"labels": pod_labels}, "spec": pod},
    }
    if resources.nodes > 1:  # one pod per node, named <job>-<index> under the headless Service
        pod["subdomain"] = name
        pod["initContainers"] = [_await_rendezvous_container(job, settings)]
        job_spec |= {"completionMode": "Indexed", "completions": resources.nodes, "parallelism": resources.nodes}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": owned_metadata(FineTuneJob.KIND, meta, name, job_labels),
        "spec": job_spec,
    }


def _trainer_command(job: FineTuneJob, subcommand: str, resources: Resources) -> list[str]:
    """One trainer process, or torchrun starting one per GPU (one per pod on CPU) and, across nodes, meeting
    the other pods' torchrun through the c10d rendezvous on pod 0."""
    assert job.metadata.name is not None
    command = ["peft-runtime", subcommand, "--plan", f"{PLAN_DIR}/{PLAN_FILE_NAME}"]
    if resources.nodes > 1:
        return [
            "torchrun",
            f"--nnodes={resources.nodes}",
            f"--nproc-per-node={max(resources.gpus, 1)}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={rendezvous_host(job.metadata.name)}:{RENDEZVOUS_PORT}",
            f"--rdzv-id={job.metadata.uid or job.metadata.name}",
            f"--rdzv-conf=join_timeout={RENDEZVOUS_JOIN_SECONDS}",
            f"--max-restarts={RENDEZVOUS_RESTARTS}",
            "--no-python",
            *command,
        ]
    if resources.gpus > 1:
        return ["torchrun", "--standalone", f"--nproc-per-node={resources.gpus}", "--no-python", *command]
    return command


def _await_rendezvous_container(job: FineTuneJob, settings: OperatorSettings) -> dict[str, Any]:
    assert job.metadata.name is not None
    host = rendezvous_host(job.metadata.name)
    return {
        "name": "await-rendezvous",
        "image": settings.runtime_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["peft-runtime", "await-rendezvous", host, f"--timeout={RENDEZVOUS_WAIT_SECONDS}"],
        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "securityContext": container_security_context(),
    }
