"""Prometheus metrics: created on first use in each process (HTTP servers and inference workers), summed
over all of them by ``/metrics`` from the multiprocess directory that ``server.serve`` sets.

The names are the monitoring's contract (docker/monitoring: alerts, recording rules, the dashboard).
"""

import functools
import os
from types import SimpleNamespace

from fastapi.responses import Response

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


@functools.cache
def metrics() -> SimpleNamespace:
    """Prometheus metrics, created on first use in each process (after PROMETHEUS_MULTIPROC_DIR is set)."""
    from prometheus_client import Counter, Histogram

    return SimpleNamespace(
        requests=Counter(
            "emotions_http_requests_total", "HTTP requests by path and status code", ["path", "status"]
        ),
        latency=Histogram(
            "emotions_http_request_duration_seconds",
            "HTTP request latency",
            ["path"],
            buckets=LATENCY_BUCKETS,
        ),
        batch_requests=Histogram(
            "emotions_batch_requests", "requests per model batch", buckets=BATCH_BUCKETS
        ),
        batch_texts=Histogram("emotions_batch_texts", "texts per model batch", buckets=BATCH_BUCKETS),
        labels=Counter("emotions_predicted_label_total", "predicted texts by label", ["label"]),
    )


def metrics_endpoint() -> Response:
    """Prometheus text format, summed over the HTTP and inference processes."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
