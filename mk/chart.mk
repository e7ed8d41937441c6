# The Helm chart, without a helm binary: the Helm SDK from PyPI (helm-python-sdk) lints and renders it.
.PHONY: chart-lint chart-template chart-argocd-cm chart-test

## `helm lint --strict` of charts/peft-operator with the default and the tested value sets.
chart-lint: install
	$(BIN)/python -m tests.chart.rendering lint

## `helm template` to stdout; VALUES=my-values.yaml to add a values file.
chart-template: install
	@$(BIN)/python -m tests.chart.rendering template $(if $(VALUES),--values $(VALUES))

## Regenerate charts/peft-operator/argocd/argocd-cm-patch.yaml from the Lua health checks.
chart-argocd-cm: install
	$(BIN)/python -m tests.chart.argocd_cm

## The chart's tests: render/lint/validate/Lua (seconds), then the install on the real apiserver.
chart-test: install $(CONTROLPLANE_IF_GO) $(LUARUNNER_IF_GO)
	$(BIN)/python -m pytest tests/chart
