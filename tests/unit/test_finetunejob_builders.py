"""Unit: the training plan, ConfigMap and Job rendered from a FineTuneJob (pure functions, no API server)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from peft_operator.api import FineTuneJob
from peft_operator.api.events import PERMANENT_FAILURE_EXIT_CODE
from peft_operator.api.plan import TrainingPlan
from peft_operator.finetunejob.job import render_training_job
from peft_operator.finetunejob.plan import render_plan_configmap
from peft_operator.finetunejob.validation import cluster_problems
from peft_operator.settings import OperatorSettings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SETTINGS = OperatorSettings(
    runtime_image="registry.example/peft-runtime:1.2.3",
    progress_url="http://peft-operator.peft-system.svc:8080",
    progress_key=b"k",
)


def _job(example: str, **metadata: Any) -> FineTuneJob:
    body = yaml.safe_load((EXAMPLES / example).read_text())
    body["metadata"].update({"namespace": "tenant-a", "uid": "0b5e-uid", **metadata})
    return FineTuneJob.model_validate(body)


def _container(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def test_job_has_deterministic_name_owner_and_labels() -> None:
    job = render_training_job(_job("finetunejob-quickstart.yaml"), SETTINGS)
    assert job["metadata"]["name"] == "support-bot-v1-train"
    owner = job["metadata"]["ownerReferences"][0]
    assert owner == {
        "apiVersion": "peft.dev/v1alpha1",
        "kind": "FineTuneJob",
        "name": "support-bot-v1",
        "uid": "0b5e-uid",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert job["metadata"]["labels"]["peft.dev/finetunejob"] == "support-bot-v1"


def test_job_requests_gpus_and_memory_and_runs_the_trainer_on_the_plan() -> None:
    container = _container(render_training_job(_job("finetunejob-quickstart.yaml"), SETTINGS))
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "1", "memory": "24Gi"}
    assert container["resources"]["requests"] == {"memory": "24Gi"}
    assert container["image"] == "registry.example/peft-runtime:1.2.3"
    assert container["command"] == ["peft-runtime", "train", "--plan", "/etc/peft/plan/plan.json"]


def test_qlora_job_is_queued_in_kueue_and_created_suspended() -> None:
    job = render_training_job(_job("finetunejob-qlora.yaml"), SETTINGS)
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-small"


def test_job_without_queue_starts_at_once() -> None:
    assert render_training_job(_job("finetunejob-lora.yaml"), SETTINGS)["spec"]["suspend"] is False


def test_pod_failure_policy_fails_fast_on_bad_data_and_ignores_preemption() -> None:
    spec = render_training_job(_job("finetunejob-lora.yaml"), SETTINGS)["spec"]
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob"
    assert rules[0]["onExitCodes"]["values"] == [PERMANENT_FAILURE_EXIT_CODE]
    assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert spec["backoffLimit"] == 3
    assert spec["activeDeadlineSeconds"] == 24 * 3600
    assert spec["template"]["spec"]["restartPolicy"] == "Never"


def test_trainer_pod_has_time_to_checkpoint_after_sigterm() -> None:
    pod = render_training_job(_job("finetunejob-lora.yaml"), SETTINGS)["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 120  # the 30 s default cuts a slow step's checkpoint short


def test_secrets_are_referenced_never_copied() -> None:
    body = yaml.safe_load((EXAMPLES / "finetunejob-quickstart.yaml").read_text())
    body["spec"]["baseModel"]["tokenSecretRef"] = {"name": "hub-token", "key": "hf"}
    body["metadata"].update({"namespace": "tenant-a", "uid": "u"})
    container = _container(render_training_job(FineTuneJob.model_validate(body), SETTINGS))
    hf = next(e for e in container["env"] if e["name"] == "HF_TOKEN")
    assert hf["valueFrom"] == {"secretKeyRef": {"name": "hub-token", "key": "hf"}}
    assert container["envFrom"] == [
        {"prefix": "DATASET_", "secretRef": {"name": "tenant-a-s3"}},
        {"prefix": "OUTPUT_", "secretRef": {"name": "tenant-a-s3"}},
    ]
    token = next(e for e in container["env"] if e["name"] == "PEFT_PROGRESS_TOKEN")
    assert token["valueFrom"]["secretKeyRef"]["name"] == "support-bot-v1-progress"
    assert all("value" not in e or e["name"] in {"HOME", "HF_HOME", "PYTHONUNBUFFERED"} for e in container["env"])


def test_pvc_uris_become_volumes_and_only_the_output_is_writable() -> None:
    body = yaml.safe_load((EXAMPLES / "finetunejob-lora.yaml").read_text())
    body["spec"]["baseModel"]["uri"] = "pvc://models/smollm2"
    body["metadata"].update({"namespace": "tenant-a", "uid": "u"})
    pod = render_training_job(FineTuneJob.model_validate(body), SETTINGS)["spec"]["template"]["spec"]
    claims = {v["persistentVolumeClaim"]["claimName"]: v for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert set(claims) == {"models", "team-data", "team-adapters"}
    assert claims["team-adapters"]["persistentVolumeClaim"]["readOnly"] is False
    assert claims["models"]["persistentVolumeClaim"]["readOnly"] is True
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["/mnt/pvc/team-adapters"]["readOnly"] is False
    assert mounts["/mnt/pvc/team-data"]["readOnly"] is True


def test_configmap_dataset_is_mounted_read_only() -> None:
    pod = render_training_job(_job("finetunejob-prefix.yaml"), SETTINGS)["spec"]["template"]["spec"]
    assert {"name": "cm-product-notes", "configMap": {"name": "product-notes"}} in pod["volumes"]
    assert {"name": "cm-product-notes", "mountPath": "/mnt/configmap/product-notes", "readOnly": True} in pod[
        "containers"
    ][0]["volumeMounts"]


def test_trainer_pod_is_hardened() -> None:
    pod = render_training_job(_job("finetunejob-lora.yaml"), SETTINGS)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = pod["containers"][0]["securityContext"]
    assert sc == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}


def test_scheduling_fields_pass_through() -> None:
    body = yaml.safe_load((EXAMPLES / "finetunejob-lora.yaml").read_text())
    body["spec"]["resources"] = {
        "gpus": 2,
        "nodeSelector": {"nvidia.com/gpu.product": "H100"},
        "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "priorityClassName": "training-low",
    }
    body["metadata"].update({"namespace": "t", "uid": "u"})
    pod = render_training_job(FineTuneJob.model_validate(body), SETTINGS)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["priorityClassName"] == "training-low"
    assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "2"}


def test_plan_configmap_carries_the_spec_and_the_progress_sink() -> None:
    job = _job("finetunejob-qlora.yaml")
    configmap = render_plan_configmap(job, SETTINGS)
    assert configmap["metadata"]["name"] == "smollm2-qlora-plan"
    plan = TrainingPlan.model_validate(json.loads(configmap["data"]["plan.json"]))
    assert plan.spec == job.spec
    assert plan.progress.url == "http://peft-operator.peft-system.svc:8080/v1/progress/tenant-a/smollm2-qlora"
    assert plan.progress.termination_log == "/dev/termination-log"
    assert plan.mounts.pvc_root == "/mnt/pvc"


def test_file_uris_are_refused_in_a_cluster_with_a_pointer_to_local_mode() -> None:
    body = yaml.safe_load((EXAMPLES / "finetunejob-lora.yaml").read_text())
    body["spec"]["dataset"]["uri"] = "file:///home/me/data.jsonl"
    problems = cluster_problems(FineTuneJob.model_validate(body))
    assert problems == [
        "spec.dataset.uri: file:// works only in local mode (peft-runtime local train); in a cluster use pvc:// or s3://"
    ]


def test_the_preflight_job_requests_no_gpu_is_never_queued_and_runs_the_preflight_on_the_same_plan() -> None:
    from peft_operator.finetunejob.job import needs_preflight, render_preflight_job

    qlora = _job("finetunejob-qlora.yaml")
    assert qlora.spec.queue is not None and qlora.spec.resources.gpus > 0
    preflight, training = render_preflight_job(qlora, SETTINGS), render_training_job(qlora, SETTINGS)
    assert preflight["metadata"]["name"] == f"{qlora.metadata.name}-preflight"
    assert preflight["spec"]["suspend"] is False
    assert not any(k.startswith("kueue.x-k8s.io/") for k in preflight["metadata"]["labels"])
    assert preflight["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "preflight"
    container = _container(preflight)
    assert container["command"] == ["peft-runtime", "preflight", "--plan", "/etc/peft/plan/plan.json"]
    assert not any("gpu" in key for key in container["resources"].get("limits", {}))
    assert "dshm" not in [v["name"] for v in preflight["spec"]["template"]["spec"]["volumes"]]
    # The same plan, volumes and credentials as the training pod.
    assert container["volumeMounts"] == [m for m in _container(training)["volumeMounts"] if m["name"] != "dshm"]
    assert container.get("envFrom") == _container(training).get("envFrom")
    assert needs_preflight(qlora, SETTINGS)
    assert not needs_preflight(qlora, OperatorSettings(preflight_gpu_jobs=False))


def test_a_cpu_only_job_has_no_preflight_step() -> None:
    from peft_operator.finetunejob.job import needs_preflight

    body = yaml.safe_load((EXAMPLES / "finetunejob-lora.yaml").read_text())
    body["spec"]["resources"] = {"gpus": 0}
    assert not needs_preflight(FineTuneJob.model_validate(body), SETTINGS)


def test_an_unknown_preflight_mode_is_refused_naming_the_modes() -> None:
    import pytest

    assert OperatorSettings.from_env({}).preflight_gpu_jobs
    assert not OperatorSettings.from_env({"PEFT_PREFLIGHT": "off"}).preflight_gpu_jobs
    with pytest.raises(ValueError, match="PEFT_PREFLIGHT is 'always'; set it to one of gpu, off"):
        OperatorSettings.from_env({"PEFT_PREFLIGHT": "always"})


def test_several_gpus_run_one_trainer_process_each_under_torchrun() -> None:
    from peft_operator.finetunejob.job import render_preflight_job

    body = yaml.safe_load((EXAMPLES / "finetunejob-lora.yaml").read_text())
    body["metadata"].update({"namespace": "tenant-a", "uid": "u"})
    body["spec"]["resources"] = {"gpus": 4}
    job = FineTuneJob.model_validate(body)
    container = _container(render_training_job(job, SETTINGS))
    assert container["command"] == [
        "torchrun",
        "--standalone",
        "--nproc-per-node=4",
        "--no-python",
        "peft-runtime",
        "train",
        "--plan",
        "/etc/peft/plan/plan.json",
    ]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert _container(render_preflight_job(job, SETTINGS))["command"][0] == "peft-runtime", (
        "the preflight is one process"
    )


def test_several_nodes_make_an_indexed_job_whose_pods_meet_through_c10d_on_pod_0() -> None:
    from peft_operator.finetunejob.job import render_preflight_job, render_trainer_service

    body = yaml.safe_load((EXAMPLES / "finetunejob-lora.yaml").read_text())
    body["metadata"].update({"name": "big", "namespace": "tenant-a", "uid": "u-1"})
    body["spec"]["resources"] = {"gpus": 8, "nodes": 4}
    job = FineTuneJob.model_validate(body)
    training = render_training_job(job, SETTINGS)
    assert {k: training["spec"][k] for k in ("completionMode", "completions", "parallelism")} == {
        "completionMode": "Indexed",
        "completions": 4,
        "parallelism": 4,
    }
    pod = training["spec"]["template"]["spec"]
    assert pod["subdomain"] == "big-train"
    assert _container(training)["command"][:9] == [
        "torchrun",
        "--nnodes=4",
        "--nproc-per-node=8",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=big-train-0.big-train:29400",
        "--rdzv-id=u-1",
        "--rdzv-conf=join_timeout=1800",
        "--max-restarts=5",
        "--no-python",
    ]
    assert {"name": "TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "value": "1"} in _container(training)["env"]
    (wait,) = pod["initContainers"]
    assert wait["command"][:3] == ["peft-runtime", "await-rendezvous", "big-train-0.big-train"]
    assert wait["securityContext"] == _container(training)["securityContext"]

    service = render_trainer_service(job)
    assert service["metadata"]["name"] == "big-train" and service["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"].items() <= training["spec"]["template"]["metadata"]["labels"].items()

    preflight = render_preflight_job(job, SETTINGS)
    assert "completionMode" not in preflight["spec"] and "initContainers" not in preflight["spec"]["template"]["spec"]
    assert _container(preflight)["command"][0] == "peft-runtime", "the preflight is one pod, one process"


def test_a_cpu_job_on_several_nodes_runs_one_process_per_pod_after_the_preflight() -> None:
    from peft_operator.finetunejob.job import needs_preflight

    body = yaml.safe_load((EXAMPLES / "finetunejob-lora.yaml").read_text())
    body["metadata"].update({"namespace": "tenant-a", "uid": "u"})
    body["spec"]["resources"] = {"gpus": 0, "nodes": 2}
    job = FineTuneJob.model_validate(body)
    assert job.spec.resources.processes == 2
    assert "--nproc-per-node=1" in _container(render_training_job(job, SETTINGS))["command"]
    assert needs_preflight(job, SETTINGS), "torchrun would restart the group on a bad dataset: checked first"


def test_the_longest_name_on_the_most_nodes_gives_pod_hostnames_that_fit_a_dns_label() -> None:
    from peft_operator.api.finetunejob import MAX_NAME_LENGTH, MAX_NODES
    from peft_operator.finetunejob.job import render_trainer_service, rendezvous_host

    body = yaml.safe_load((EXAMPLES / "finetunejob-lora.yaml").read_text())
    body["metadata"].update({"name": "a" * MAX_NAME_LENGTH, "namespace": "tenant-a", "uid": "u"})
    body["spec"]["resources"] = {"gpus": 0, "nodes": MAX_NODES}
    job = FineTuneJob.model_validate(body)
    training = render_training_job(job, SETTINGS)
    # The Job controller names each pod's host <job>-<index>; the Service and the rendezvous host are DNS labels.
    last_hostname = f"{training['metadata']['name']}-{MAX_NODES - 1}"
    labels = [
        last_hostname,
        render_trainer_service(job)["metadata"]["name"],
        *rendezvous_host(job.metadata.name or "").split("."),
    ]
    assert all(len(label) <= 63 for label in labels), [(label, len(label)) for label in labels]
