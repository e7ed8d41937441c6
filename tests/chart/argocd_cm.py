"""The ready-to-merge argocd-cm snippet, generated from the Lua health checks next to it.

    python -m tests.chart.argocd_cm     # rewrite charts/peft-operator/argocd/argocd-cm-patch.yaml

tests/chart/test_argocd_health.py fails when the checked-in snippet drifts from the .lua files."""

from __future__ import annotations

from pathlib import Path

ARGOCD_DIR = Path(__file__).resolve().parents[2] / "charts" / "peft-operator" / "argocd"
PATCH = ARGOCD_DIR / "argocd-cm-patch.yaml"
# argocd-cm key -> Lua file. Argo CD looks health checks up as resource.customizations.health.<group>_<kind>.
HEALTH_CHECKS = {
    "resource.customizations.health.peft.dev_AdapterAttachment": "health-adapterattachment.lua",
    "resource.customizations.health.peft.dev_AdapterDeployment": "health-adapterdeployment.lua",
    "resource.customizations.health.peft.dev_FineTuneJob": "health-finetunejob.lua",
}

HEADER = """\
# GENERATED from health-*.lua by `make chart-argocd-cm`: do not edit (a test fails when it drifts).
# Argo CD health checks for peft.dev FineTuneJob, AdapterDeployment and AdapterAttachment. Merge into argocd-cm:
#   kubectl -n argocd patch configmap argocd-cm --type merge \\
#     --patch-file charts/peft-operator/argocd/argocd-cm-patch.yaml
apiVersion: v1
kind: ConfigMap
metadata:
  name: argocd-cm
  namespace: argocd
  labels:
    app.kubernetes.io/name: argocd-cm
    app.kubernetes.io/part-of: argocd
data:
"""


def render_patch() -> str:
    text = HEADER
    for key, filename in HEALTH_CHECKS.items():
        lua = (ARGOCD_DIR / filename).read_text()
        body = "".join(f"    {line}" if line.strip() else "\n" for line in lua.splitlines(keepends=True))
        text += f"  {key}: |\n{body}"
    return text


if __name__ == "__main__":
    PATCH.write_text(render_patch())
    print(f"wrote {PATCH}")
