"""Prometheus metrics (prometheus-client), one registry per app.

Counters and histograms are recorded by the chat route as requests progress; gauges are read
from the engine service's `stats()` snapshot at scrape time by `_StateCollector`, so they are
never stale. The
`cameo_lora_requests_info` gauge follows vLLM's `vllm:lora_requests_info` shape (labels
`running_lora_adapters`, `waiting_lora_adapters`, `max_lora`), which the Kubernetes inference
gateway reads for adapter affinity. docs/OPERATIONS.md explains each metric.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from server.service.stats import ServiceStats

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self, app_state: Any) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("cameo_requests", "Chat requests by persona and outcome",
                                ["persona", "status"], registry=r)
        self.ttft = Histogram("cameo_time_to_first_token_seconds",
                              "Arrival to first generated token", ["persona"],
                              buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("cameo_inter_token_latency_seconds",
                             "Time between consecutive generated tokens of a request",
                             buckets=TOKEN_BUCKETS, registry=r)
        self.e2e = Histogram("cameo_e2e_request_latency_seconds",
                             "Arrival to last token", ["persona"], buckets=LATENCY_BUCKETS,
                             registry=r)
        self.queue = Histogram("cameo_request_queue_time_seconds",
                               "Submit to admission into a batch row", buckets=LATENCY_BUCKETS,
                               registry=r)
        self.prompt_tokens = Counter("cameo_prompt_tokens", "Prompt tokens of finished requests",
                                     registry=r)
        self.generation_tokens = Counter("cameo_generation_tokens", "Generated tokens",
                                         registry=r)
        self.rejected = Counter("cameo_rejected_requests", "Requests refused before the engine",
                                ["reason"], registry=r)
        r.register(_StateCollector(app_state))


class RequestTimer:
    """Records one request's latencies into `Metrics` as its outputs arrive."""

    def __init__(self, metrics: Metrics, persona: str) -> None:
        self.metrics = metrics
        self.persona = persona
        self.start = time.monotonic()
        self.last: float | None = None

    def token(self, queue_seconds: float | None, count: int) -> None:
        now = time.monotonic()
        if self.last is None:
            self.metrics.ttft.labels(self.persona).observe(now - self.start)
            if queue_seconds is not None:
                self.metrics.queue.observe(max(queue_seconds, 0.0))
        else:
            self.metrics.itl.observe(now - self.last)
        self.last = now
        self.metrics.generation_tokens.inc(count)

    def finish(self, status: str, prompt_tokens: int) -> None:
        self.metrics.requests.labels(self.persona, status).inc()
        self.metrics.prompt_tokens.inc(prompt_tokens)
        if status == "ok":
            self.metrics.e2e.labels(self.persona).observe(time.monotonic() - self.start)


class _StateCollector(Collector):
    def __init__(self, app_state: Any) -> None:
        self.state = app_state

    def collect(self) -> Iterator[Any]:
        cameo = getattr(self.state, "cameo", None)
        admission = getattr(self.state, "admission", None)
        if cameo is None:
            return
        stats: ServiceStats = cameo.service.stats()
        yield _gauge("cameo_running_requests", "Requests holding a batch row", stats.running)
        yield _gauge("cameo_waiting_requests", "Requests accepted but not yet in a batch row",
                     admission.waiting_requests if admission else stats.waiting)
        yield _gauge("cameo_engine_waiting_requests", "Requests queued inside the engine",
                     stats.waiting)
        yield _counter("cameo_engine_steps", "Engine iterations", stats.steps)
        yield _gauge("cameo_adapter_slots", "Device adapter slots", stats.slots)
        yield _gauge("cameo_adapter_slots_used", "Device slots holding an adapter",
                     len(stats.resident))
        yield _counter("cameo_adapter_slot_loads", "Adapters copied into a device slot",
                       stats.slot_loads)
        yield _counter("cameo_adapter_slot_evictions", "Adapters evicted from a device slot",
                       stats.slot_evictions)
        yield _counter("cameo_adapter_merges", "Adapters merged into the base layers", stats.merges)
        yield _counter("cameo_adapter_unmerges", "Merged adapters restored to the slot path",
                       stats.unmerges)
        merged = GaugeMetricFamily("cameo_merged_adapter_info",
                                   "1 for the adapter merged into the base now (merged mode)",
                                   labels=["adapter"])
        if stats.merged:
            merged.add_metric([stats.merged], 1.0)
        yield merged
        yield _gauge("cameo_host_adapters", "Adapters held in host memory", len(stats.host_keys))
        yield _gauge("cameo_host_adapter_capacity", "Host memory adapter capacity",
                     stats.host_capacity)
        yield _counter("cameo_host_adapter_hits", "Host cache hits", stats.host_hits)
        yield _counter("cameo_host_adapter_misses", "Host cache misses (disk reads)",
                       stats.host_misses)
        yield _counter("cameo_host_adapter_evictions", "Host cache evictions",
                       stats.host_evictions)
        info = GaugeMetricFamily(
            "cameo_lora_requests_info", "Running and waiting personas (vLLM lora_requests_info)",
            labels=["running_lora_adapters", "waiting_lora_adapters", "max_lora"])
        info.add_metric([",".join(sorted(stats.running_personas)),
                         ",".join(sorted(stats.waiting_personas)), str(stats.slots)], time.time())
        yield info


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)
