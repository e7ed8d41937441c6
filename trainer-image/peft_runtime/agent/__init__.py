"""The adapter agent (`peft-runtime agent`): a sidecar in every inference pod that fetches an adapter,
verifies its digests and compatibility, and asks the engine on localhost to load it. Its API (pydantic only) is
`peft_operator.api.agent`, shared with the operator's client."""
