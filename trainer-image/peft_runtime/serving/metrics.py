"""Prometheus metrics of one server (its own registry, so several servers can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServingMetrics:
    """Per `model` label: the adapter name, or the base model's served name."""

    def __init__(self) -> None:
        disable_created_metrics()  # no *_created series: they double the output and nobody graphs them
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "peft_serve_requests",
            "Generation requests answered, by model and outcome.",
            ["model", "status"],
            registry=r,
        )
        self.prompt_tokens = Counter("peft_serve_prompt_tokens", "Prompt tokens processed.", ["model"], registry=r)
        self.generation_tokens = Counter("peft_serve_generation_tokens", "Tokens generated.", ["model"], registry=r)
        self.latency = Histogram(
            "peft_serve_request_latency_seconds",
            "Time from request to last token.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.first_token = Histogram(
            "peft_serve_time_to_first_token_seconds",
            "Time from request to first text.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.adapters_loaded = Gauge("peft_serve_adapters_loaded", "Adapters registered now.", registry=r)
        self.adapters_resident = Gauge("peft_serve_adapters_resident", "Adapters in memory now.", registry=r)
        self.adapter_evictions = Counter(
            "peft_serve_adapter_evictions",
            "Times an adapter was evicted from memory to make room.",
            ["model"],
            registry=r,
        )
        self.adapter_cold_loads = Counter(
            "peft_serve_adapter_cold_loads", "Requests that loaded their evicted adapter first.", ["model"], registry=r
        )
        self.adapter_resident_seconds = Counter(
            "peft_serve_adapter_resident_seconds",
            "Time an adapter spent in memory, counted when it leaves (evicted, replaced or unloaded).",
            ["model"],
            registry=r,
        )
        self.adapter_cold_load_seconds = Histogram(
            "peft_serve_adapter_cold_load_seconds",
            "Time to bring an evicted adapter back for a request.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.adapter_loads = Counter(
            "peft_serve_adapter_loads", "Adapter load requests, by result.", ["result"], registry=r
        )
        self.adapter_load_seconds = Histogram(
            "peft_serve_adapter_load_seconds", "Time to load one adapter.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_rows = Histogram(
            "peft_serve_batch_rows", "Rows in each forward step.", buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("peft_serve_queue_depth", "Requests waiting to join a batch.", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
