"""The Helm chart, rendered and linted with the Helm SDK (`helm template` / `helm lint --strict` without a
binary), every manifest validated against the Kubernetes 1.37 schemas, and cross-checked against the
operator code it configures (settings, CLI, labels, ports). No cluster needed; seconds."""

from __future__ import annotations

import base64
import inspect
import json
import re
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from peft_operator import cli
from peft_operator.naming import AGENT_PORT, LABEL_ADAPTERDEPLOYMENT, finetunejob_labels
from peft_operator.settings import OperatorSettings
from tests.chart.rendering import (
    CHART_DIR,
    NAMESPACE,
    RELEASE,
    SCENARIOS,
    clusterwide_rules,
    env_of,
    leader_election_rules,
    namespaced_rules,
    notes,
    of_kind,
    one,
    operator_container,
    render,
    rules,
)

KUBERNETES_VERSION = "1.37"
# prometheus-operator's kind: kubernetes-validate has no schema for it.
CUSTOM_KINDS = {"ServiceMonitor", "PodMonitor"}
# Every PEFT_* variable OperatorSettings.from_env reads (a variable the chart sets must be one of them).
ENV_THE_OPERATOR_READS = set(re.findall(r'env.get\("(PEFT_[A-Z_]+)"', inspect.getsource(OperatorSettings.from_env)))
REQUIRED_LABELS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
}


# --------------------------------------------------------------------------- lint, schema, validity


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_chart_lints_clean_in_strict_mode(scenario: str) -> None:
    report = helm_python.lint(CHART_DIR, SCENARIOS[scenario], strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # warnings and errors
    assert report["errors"] == [] and problems == []


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_manifest_is_valid_for_kubernetes_1_37(chart: Any, scenario: str) -> None:
    objects = render(chart, SCENARIOS[scenario])
    for obj in objects:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {error.message} at {list(error.path)}")


def test_chart_crds_are_the_generated_ones(chart: Any) -> None:
    crds = {yaml.safe_load(c["data"])["metadata"]["name"]: c["data"] for c in chart.crds}
    assert set(crds) == {"finetunejobs.peft.dev", "adapterdeployments.peft.dev", "adapterattachments.peft.dev"}
    for name, text in crds.items():
        assert text == (CHART_DIR.parents[1] / "crds" / f"{name}.yaml").read_text()


BAD_VALUES = [
    ({"replicas": 0}, "replicas"),
    ({"replicas": "two"}, "replicas"),
    ({"replica": 2}, "replica"),
    ({"image": {"repository": "x", "pullPolicy": "Sometimes"}}, "pullPolicy"),
    ({"image": {"repository": "x", "pullPolicy": "Always", "digest": "latest"}}, "digest"),
    ({"watchNamespaces": ["Tenant_A"]}, "watchNamespaces"),
    ({"watchNamespaces": ["tenant-a", "tenant-a"]}, "watchNamespaces"),
    ({"watchNamespaces": "tenant-a"}, "watchNamespaces"),
    ({"metrics": {"port": 70000}}, "port"),
    ({"metrics": {"serviceMonitor": {"enabled": "yes"}}}, "enabled"),
    ({"networkPolicy": {"enabled": True, "apiServer": {"cidrs": ["somewhere"]}}}, "cidrs"),
    ({"networkPolicy": {"colour": "blue"}}, "colour"),
    ({"progress": {"existingSecret": "My Secret"}}, "existingSecret"),
    ({"probes": {"liveness": {"periodSeconds": 0}}}, "periodSeconds"),
    ({"resources": {"requests": {"cpu": "1"}, "limit": {}}}, "limit"),
    ({"leaderElection": {"enabled": "no"}}, "enabled"),
]


@pytest.mark.parametrize(("values", "field"), BAD_VALUES, ids=[json.dumps(v) for v, _ in BAD_VALUES])
def test_values_that_break_the_schema_are_refused_with_a_message(
    chart: Any, values: dict[str, Any], field: str
) -> None:
    with pytest.raises(helm_python.HelmError) as refused:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert "values don't meet the specifications of the schema" in str(refused.value)
    assert field in str(refused.value)


def test_schema_types_and_describes_every_value_and_knows_every_default() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False

    def walk(node: dict[str, Any], path: str) -> list[str]:
        problems = []
        if "type" not in node:
            problems.append(f"{path}: no type")
        if path and "description" not in node:
            problems.append(f"{path}: no description")
        if "properties" in node and node.get("additionalProperties") is not False:
            problems.append(f"{path}: objects of this chart must set additionalProperties: false")
        for key, child in node.get("properties", {}).items():
            problems += walk(child, f"{path}.{key}")
        return problems

    assert walk(schema, "") == []

    def undeclared(values: Any, node: dict[str, Any], path: str) -> list[str]:
        if not isinstance(values, dict) or "properties" not in node:
            return []
        missing = [f"{path}.{k}" for k in values if k not in node["properties"]]
        for key, value in values.items():
            if key in node["properties"]:
                missing += undeclared(value, node["properties"][key], f"{path}.{key}")
        return missing

    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert undeclared(defaults, schema, "") == []


# --------------------------------------------------------------------------- what gets rendered


def test_default_install_renders_the_cluster_wide_operator(chart: Any) -> None:
    objects = render(chart)
    assert sorted(o["kind"] for o in objects) == sorted(
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Secret",
            "Service",
            "Service",
            "ServiceAccount",
        ]
    )
    assert one(objects, "Deployment")["spec"]["replicas"] == 2
    for obj in objects:
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["kind"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_object_carries_the_recommended_labels(chart: Any, scenario: str) -> None:
    for obj in render(chart, SCENARIOS[scenario]):
        labels = obj["metadata"].get("labels", {})
        assert set(labels) >= REQUIRED_LABELS, f"{obj['kind']}/{obj['metadata']['name']}"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        assert labels["helm.sh/chart"] == "peft-operator-0.1.0"


def _leader_election_role(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objects, "Role", f"{RELEASE}-leader-election")


def test_cluster_role_rules_equal_the_rule_files(chart: Any) -> None:
    objects = render(chart)
    assert one(objects, "ClusterRole")["rules"] == clusterwide_rules()
    binding = one(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == one(objects, "ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}]
    assert [r["metadata"]["name"] for r in of_kind(objects, "Role")] == [f"{RELEASE}-leader-election"]


def test_lease_role_in_the_release_namespace_equals_its_rule_file(chart: Any) -> None:
    objects = render(chart)
    role = _leader_election_role(objects)
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == leader_election_rules()
    binding = one(objects, "RoleBinding", role["metadata"]["name"])
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}]


def test_namespaced_mode_grants_a_role_per_namespace_and_only_cluster_reads_cluster_wide(chart: Any) -> None:
    objects = render(chart, SCENARIOS["namespaced"])
    assert one(objects, "ClusterRole")["rules"] == rules("cluster-rules.yaml")
    roles = [r for r in of_kind(objects, "Role") if r is not _leader_election_role(objects)]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["tenant-a", "tenant-b"]
    for role in roles:
        assert role["rules"] == namespaced_rules()
    bindings = [b for b in of_kind(objects, "RoleBinding") if b["metadata"]["namespace"] != NAMESPACE]
    assert sorted((b["metadata"]["namespace"], b["roleRef"]["name"]) for b in bindings) == [
        ("tenant-a", RELEASE),
        ("tenant-b", RELEASE),
    ]
    for binding in bindings:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}]
    assert env_of(operator_container(objects))["PEFT_WATCH_NAMESPACES"]["value"] == "tenant-a,tenant-b"


def test_rbac_template_includes_the_rule_files_and_copies_no_rule() -> None:
    template = (CHART_DIR / "templates" / "rbac.yaml").read_text()
    assert "apiGroups" not in template and "verbs" not in template
    for path in sorted((CHART_DIR / "files").glob("*-rules.yaml")):
        assert f'.Files.Get "files/{path.name}"' in template


def test_operator_runs_with_leader_election_on_a_lease_it_may_update(chart: Any) -> None:
    objects = render(chart)
    container = operator_container(objects)
    env = env_of(container)
    assert container["command"] == ["peft-operator"]
    assert container["args"] == ["run"]
    assert env["PEFT_LEADER_ELECTION_NAMESPACE"]["value"] == _leader_election_role(objects)["metadata"]["namespace"]
    assert env["PEFT_LEASE_NAME"]["value"] == RELEASE
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "progress"}


def test_replicas_without_leader_election_are_refused(chart: Any) -> None:
    with pytest.raises(helm_python.HelmError, match=r"replicas > 1 needs leaderElection\.enabled"):
        render(chart, {"leaderElection": {"enabled": False}})
    objects = render(chart, {"leaderElection": {"enabled": False}, "replicas": 1})
    assert "PEFT_LEADER_ELECTION_NAMESPACE" not in env_of(operator_container(objects))
    assert of_kind(objects, "Role") == []


def test_operator_cli_accepts_the_arguments_the_chart_passes(chart: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    container = operator_container(render(chart, SCENARIOS["everything"]))
    seen: list[Any] = []
    monkeypatch.setattr(cli, "_run", seen.append)
    cli.main(container["args"])
    assert seen[0].command == "run" and seen[0].verbose is True


def test_existing_service_account_is_bound_but_not_created(chart: Any) -> None:
    with pytest.raises(helm_python.HelmError, match=r"serviceAccount\.name is required"):
        render(chart, {"serviceAccount": {"create": False}})
    objects = render(chart, {"serviceAccount": {"create": False, "name": "platform-operator"}})
    assert of_kind(objects, "ServiceAccount") == []
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "platform-operator"
    for binding in of_kind(objects, "ClusterRoleBinding") + of_kind(objects, "RoleBinding"):
        assert binding["subjects"][0]["name"] == "platform-operator"


@pytest.mark.parametrize("scenario", ["defaults", "namespaced", "everything"])
def test_operator_settings_read_from_the_pod_env_point_at_the_chart_services(chart: Any, scenario: str) -> None:
    objects = render(chart, SCENARIOS[scenario])
    container = operator_container(objects)
    env = env_of(container)
    plain = {name: e["value"] for name, e in env.items() if "value" in e}
    assert set(env) <= ENV_THE_OPERATOR_READS | {"PYTHONDONTWRITEBYTECODE", "TZ"}
    settings = OperatorSettings.from_env({**plain, "PEFT_PROGRESS_KEY": "from-the-secret"})

    progress = one(objects, "Service", RELEASE)
    metrics = next(s for s in of_kind(objects, "Service") if s["metadata"]["labels"]["peft.dev/service"] == "metrics")
    progress_port = progress["spec"]["ports"][0]
    assert settings.progress_url == f"http://{progress['metadata']['name']}.{NAMESPACE}.svc:{progress_port['port']}"
    assert settings.progress_url == f"http://{RELEASE}.{NAMESPACE}.svc:8080"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert settings.progress_port == ports[progress_port["targetPort"]] == 8080
    assert settings.metrics_port == ports[metrics["spec"]["ports"][0]["targetPort"]] == 9090
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": progress_port["targetPort"]}
    assert settings.watch_namespaces == tuple(SCENARIOS[scenario].get("watchNamespaces", ()))
    expected_image = (
        "registry.example/runtime:0.1.0-cuda" if scenario == "everything" else "ghcr.io/peft-operator/runtime:0.1.0"
    )
    assert settings.runtime_image == expected_image
    assert settings.leader_election_namespace == NAMESPACE
    assert settings.lease_name == one(objects, "Deployment")["metadata"]["name"]


def test_services_select_exactly_the_operator_pods(chart: Any) -> None:
    objects = render(chart)
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    selector = one(objects, "Deployment")["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    for service in of_kind(objects, "Service"):
        assert service["spec"]["selector"] == selector
    # the engine and trainer pods the operator creates never match (their component differs)
    assert finetunejob_labels("x")["app.kubernetes.io/component"] != selector["app.kubernetes.io/component"]


def test_progress_key_is_generated_once_or_taken_from_an_existing_secret(chart: Any) -> None:
    objects = render(chart)
    secret = one(objects, "Secret")
    key = base64.b64decode(secret["data"]["progress-key"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{48}", key)
    assert render(chart)[0] is not None and one(render(chart), "Secret")["data"] != secret["data"]  # random
    ref = env_of(operator_container(objects))["PEFT_PROGRESS_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": secret["metadata"]["name"], "key": "progress-key"}
    template = (CHART_DIR / "templates" / "secret.yaml").read_text()
    assert 'lookup "v1" "Secret"' in template  # an upgrade keeps the installed key

    objects = render(chart, SCENARIOS["existing-secret"])
    assert of_kind(objects, "Secret") == []
    ref = env_of(operator_container(objects))["PEFT_PROGRESS_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "my-progress-key", "key": "key"}


def test_operator_pod_is_locked_down_but_keeps_its_api_token(chart: Any) -> None:
    objects = render(chart)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is True  # the operator talks to the API server
    assert one(objects, "ServiceAccount")["automountServiceAccountToken"] is False  # nobody else gets it
    for forbidden in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(forbidden)
    container = operator_container(objects)
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["privileged"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
    assert all("hostPath" not in v for v in pod["volumes"])
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def test_pod_disruption_budget_only_with_more_than_one_replica(chart: Any) -> None:
    pdb = one(render(chart), "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == one(render(chart), "Deployment")["spec"]["selector"]["matchLabels"]
    assert of_kind(render(chart, SCENARIOS["single-replica"]), "PodDisruptionBudget") == []
    assert of_kind(render(chart, {"podDisruptionBudget": {"enabled": False}}), "PodDisruptionBudget") == []


def test_replicas_spread_over_nodes_unless_affinity_is_given(chart: Any) -> None:
    pod = one(render(chart), "Deployment")["spec"]["template"]["spec"]
    term = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    custom = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}
    pod = one(render(chart, {"affinity": custom}), "Deployment")["spec"]["template"]["spec"]
    assert pod["affinity"] == custom


def test_service_monitor_scrapes_the_metrics_service_only(chart: Any) -> None:
    assert of_kind(render(chart), "ServiceMonitor") == []
    objects = render(chart, SCENARIOS["service-monitor"])
    monitor = one(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    matched = [
        s
        for s in of_kind(objects, "Service")
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert [s["metadata"]["name"] for s in matched] == [f"{RELEASE}-metrics"]
    assert monitor["spec"]["endpoints"][0]["port"] == matched[0]["spec"]["ports"][0]["name"] == "metrics"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


def _peer_matches(peer: dict[str, Any], namespace_labels: dict[str, str], pod_labels: dict[str, str]) -> bool:
    """Whether a NetworkPolicyPeer (namespaceSelector + podSelector, no ipBlock) selects a pod."""

    def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
        if selector is None:
            return True
        if not selector.get("matchLabels", {}).items() <= labels.items():
            return False
        for expression in selector.get("matchExpressions", []):
            key, op, values = expression["key"], expression["operator"], expression.get("values", [])
            if op == "In" and labels.get(key) not in values:
                return False
            if op == "Exists" and key not in labels:
                return False
        return True

    return selects(peer.get("namespaceSelector"), namespace_labels) and selects(peer.get("podSelector"), pod_labels)


def _allowed(
    rules_: list[dict[str, Any]], direction: str, namespace: str, pod_labels: dict[str, str], port: int
) -> bool:
    ns_labels = {"kubernetes.io/metadata.name": namespace}
    return any(
        any(p["port"] == port for p in rule["ports"])
        and any(_peer_matches(peer, ns_labels, pod_labels) for peer in rule[direction] if "ipBlock" not in peer)
        for rule in rules_
    )


def test_network_policy_admits_trainers_and_monitoring_and_reaches_api_dns_and_agents(chart: Any) -> None:
    assert of_kind(render(chart), "NetworkPolicy") == []
    policy = one(render(chart, SCENARIOS["network-policy"]), "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    trainer = finetunejob_labels("support-bot-v1")  # the labels the operator gives trainer pods
    engine = {LABEL_ADAPTERDEPLOYMENT: "smollm2-shared"}  # engine pods and equipped targetRef pods
    ingress, egress = policy["ingress"], policy["egress"]

    assert _allowed(ingress, "from", "tenant-a", trainer, 8080)
    assert not _allowed(ingress, "from", "tenant-a", {"app": "curious"}, 8080)
    assert not _allowed(ingress, "from", "tenant-a", trainer, 9090)
    assert _allowed(ingress, "from", "monitoring", {"app": "prometheus"}, 9090)
    assert not _allowed(ingress, "from", "tenant-a", {"app": "prometheus"}, 9090)

    assert _allowed(egress, "to", "kube-system", {"k8s-app": "kube-dns"}, 53)
    assert {p["protocol"] for p in egress[1]["ports"]} == {"UDP", "TCP"}
    assert _allowed(egress, "to", "tenant-a", engine, AGENT_PORT)
    assert not _allowed(egress, "to", "tenant-a", {"app": "other"}, AGENT_PORT)
    api = egress[0]
    assert api["to"] == [{"ipBlock": {"cidr": "0.0.0.0/0"}}]
    assert sorted(p["port"] for p in api["ports"]) == [443, 6443]


def test_network_policy_in_namespaced_mode_admits_only_the_watched_namespaces(chart: Any) -> None:
    policy = one(render(chart, SCENARIOS["network-policy-namespaced"]), "NetworkPolicy")["spec"]
    trainer = finetunejob_labels("support-bot-v1")
    assert _allowed(policy["ingress"], "from", "tenant-a", trainer, 8080)
    assert not _allowed(policy["ingress"], "from", "tenant-b", trainer, 8080)
    assert _allowed(policy["egress"], "to", "tenant-a", {LABEL_ADAPTERDEPLOYMENT: "x"}, AGENT_PORT)
    assert not _allowed(policy["egress"], "to", "tenant-b", {LABEL_ADAPTERDEPLOYMENT: "x"}, AGENT_PORT)


def test_images_default_to_the_app_version_and_can_be_pinned_by_digest(chart: Any) -> None:
    container = operator_container(render(chart))
    assert container["image"] == "ghcr.io/peft-operator/operator:0.1.0"
    container = operator_container(render(chart, SCENARIOS["everything"]))
    assert container["image"] == "registry.example/peft-operator@sha256:" + "a" * 64
    assert env_of(container)["PEFT_IMAGE_PULL_POLICY"]["value"] == "IfNotPresent"
    assert env_of(container)["TZ"] == {"name": "TZ", "value": "UTC"}


def test_the_longest_release_name_still_gives_valid_names(chart: Any) -> None:
    name = "a-release-name-of-fifty-three-characters-the-helm-max"  # Helm's limit
    assert len(name) == 53
    helm_python.validate_release_name(name)
    objects = render(chart, name=name)
    for obj in objects:
        limit = 63 if obj["kind"] == "Service" else 253  # Services are DNS labels, the rest subdomains
        assert len(obj["metadata"]["name"]) <= limit, obj["metadata"]["name"]
        assert all(len(value) <= 63 for value in obj["metadata"]["labels"].values())
    progress = env_of(operator_container(objects))["PEFT_PROGRESS_URL"]["value"]
    service = next(s for s in of_kind(objects, "Service") if s["metadata"]["labels"]["peft.dev/service"] == "progress")
    assert progress == f"http://{service['metadata']['name']}.{NAMESPACE}.svc:8080"


def test_notes_tell_how_to_check_and_upgrade(chart: Any) -> None:
    text = notes(chart)
    assert f"rollout status deployment/{RELEASE}" in text
    assert "kubectl apply --server-side -f charts/peft-operator/crds/" in text
    assert f"Lease {NAMESPACE}/{RELEASE}: one reconciles, the others stand by" in text


def _leaf_values(values: dict[str, Any], schema: dict[str, Any], path: str = "") -> list[str]:
    """Dotted paths of the values a user sets: recursion stops at Kubernetes-typed and free-form objects."""
    leaves = []
    for key, value in values.items():
        node = schema["properties"][key]
        dotted = f"{path}{key}"
        if (
            isinstance(value, dict)
            and node.get("additionalProperties") is False
            and "matchLabels" not in node["properties"]
        ):
            leaves += _leaf_values(value, node, f"{dotted}.")
        else:
            leaves.append(dotted)
    return leaves


def test_install_guide_documents_every_value() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    guide = (CHART_DIR.parents[1] / "docs" / "install.md").read_text()
    documented = set(re.findall(r"`([a-zA-Z.]+)`", guide))
    undocumented = [
        leaf
        for leaf in _leaf_values(defaults, schema)
        if not any(leaf == d or leaf.startswith(f"{d}.") for d in documented)
    ]
    assert undocumented == []


def test_argocd_application_example_installs_this_chart_with_valid_values(chart: Any) -> None:
    application = yaml.safe_load((CHART_DIR.parents[1] / "docs" / "argocd-application.yaml").read_text())
    assert (application["apiVersion"], application["kind"]) == ("argoproj.io/v1alpha1", "Application")
    source = application["spec"]["source"]
    assert source["path"] == "charts/peft-operator"
    objects = render(chart, source["helm"]["valuesObject"], namespace=application["spec"]["destination"]["namespace"])
    assert of_kind(objects, "Secret") == []  # the key comes from the Secret created by hand


def test_pod_monitor_scrapes_the_engine_pods_of_every_adapterdeployment(chart: Any) -> None:
    from pathlib import Path

    from peft_operator.adapterdeployment.engine import render_engine_deployment
    from peft_operator.api import AdapterDeployment

    example = Path(__file__).resolve().parents[2] / "examples" / "adapterdeployment-quickstart.yaml"
    body = yaml.safe_load(example.read_text())
    body["metadata"].update({"namespace": "tenant-a", "uid": "uid-1"})  # as read from the apiserver
    adep = AdapterDeployment.model_validate(body)
    assert of_kind(render(chart), "PodMonitor") == []
    monitor = one(render(chart, SCENARIOS["service-monitor"]), "PodMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    # The engine pods the operator renders carry the selected label and a port of that name.
    pod = render_engine_deployment(adep, OperatorSettings())["spec"]["template"]
    [requirement] = monitor["spec"]["selector"]["matchExpressions"]
    assert requirement == {"key": "peft.dev/adapterdeployment", "operator": "Exists"}
    assert requirement["key"] in pod["metadata"]["labels"]
    ports = [p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])]
    assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
