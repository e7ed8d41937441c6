"""peft-runtime: the package of the runtime image. `peft-runtime train` trains one adapter from a plan;
`serve` and `agent` run the multi-adapter server and its sidecar. It never imports kopf: the only code it
shares with the operator is `peft_operator.api` (pydantic models)."""

__version__ = "0.1.0"
