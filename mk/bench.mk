# Benchmarks: each prints ratios against a baseline measured in the same run (never timed unit tests).
.PHONY: bench bench-operator bench-trainer bench-serving

bench: bench-operator bench-trainer bench-serving

## FineTuneJob controller at 50 and 500 jobs against the real apiserver.
bench-operator: install controlplane
	$(BIN)/python -m bench.operator_scale
