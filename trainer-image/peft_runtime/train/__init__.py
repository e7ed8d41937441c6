"""Training: `peft-runtime train --plan plan.json` turns a TrainingPlan into a PEFT adapter.

Modules, in the order a run uses them: `cli` (argparse), `run` (events, exit codes), `trainer` (the loop,
top to bottom), `storage` (URIs to local paths, S3), `data` (rows, tokens, preflight), `batches` (length
grouping, packing, collation), `methods` (our API -> PEFT config objects), `checkpoints`, `progress`
(sinks), `output` (adapter directory and manifest)."""
