"""Prometheus metrics of one gateway, in a registry of its own (several apps may share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from feedback.metrics import exposition

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class GatewayMetrics:
    """Latency and tokens per arm and role, queues, shadow outcomes, batch sizes, failures, fallbacks, blocks."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.latency = Histogram(
            "flywheel_response_latency_seconds",
            "Response latency",
            ["arm", "role"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "flywheel_time_to_first_token_seconds", "Time to first token", ["arm"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.tokens = Counter("flywheel_completion_tokens", "Completion tokens generated", ["arm", "role"], registry=r)
        self.responses = Counter("flywheel_responses", "Responses by outcome", ["arm", "role", "outcome"], registry=r)
        self.queue_depth = Gauge("flywheel_queue_depth", "Requests waiting for a batch", ["role"], registry=r)
        self.shadow = Counter("flywheel_shadow", "Shadow copies by outcome", ["outcome"], registry=r)
        self.batch_size = Histogram(
            "flywheel_batch_size", "Rows per generate batch", buckets=_BATCH_BUCKETS, registry=r
        )
        self.rejected = Counter("flywheel_rejected_requests", "Served requests refused with 429", registry=r)
        self.publish_failures = Counter("flywheel_event_publish_failures", "Events the log refused", registry=r)
        self.fallbacks = Counter(
            "flywheel_challenger_fallbacks",
            "A/B challenger answers that failed, timed out or were invalid; the champion answered instead",
            ["reason"],
            registry=r,
        )
        self.stream_failures = Counter(
            "flywheel_stream_failures", "Streams ended with an error chunk after their first chunk", ["arm"], registry=r
        )
        self.bases = Gauge("flywheel_base_models", "Base models loaded on demand, by state", ["state"], registry=r)
        self.key_limited = Counter(
            "flywheel_key_limited",
            "Requests refused with 429: a key over its rate or cap",
            ["reason"],
            registry=r,
        )
        self.content_blocks = Counter(
            "flywheel_content_blocked",
            "Prompts refused and served answers replaced or stopped by the content filter",
            ["where", "category"],
            registry=r,
        )
        self.load_failures = Counter(
            "flywheel_model_load_failures", "Model versions (bases or adapters) that failed to load", registry=r
        )

    def render(self) -> bytes:
        """The text exposition format."""
        return exposition(self.registry)
