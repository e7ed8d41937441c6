"""The adapter agent (`peft-runtime agent`): a sidecar in every inference pod that fetches an adapter,
verifies its digests and compatibility, and asks the engine on localhost to load it. `protocol` is its API
(pydantic only, imported by the operator)."""
