"""Prometheus metrics of the HTTP API (prometheus_client; no personal data: route templates only).

``visage_http_requests_total{endpoint, method, outcome}`` counts requests,
``visage_http_request_duration_seconds{endpoint, outcome}`` is their latency histogram (not of
``/v1/analytics``: a frame's duration tells its number of faces, see the boundary's
``UNTIMED_ROUTES``), and gauges (gallery size, analytics frames) are read when scraped; a gauge
that cannot be read then is left out of that scrape, not the scrape failed (Prometheus'
convention; an availability gauge says why it is missing).
``endpoint`` is the route template (``/v1/subjects/{pid}``), never the requested path, so no pid
reaches a label (``unmatched`` where no route matched); ``method`` is one of the nine standard
methods, or ``other`` (the boundary's ``method_label``): no label value is the client's own
text.

Each app has its own :class:`~prometheus_client.CollectorRegistry` (a process may build many
apps, tests do), so nothing goes to the global registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

# The text format generate_latest writes. prometheus_client >= 0.22 names it
# CONTENT_TYPE_PLAIN_0_0_4 and moved CONTENT_TYPE_LATEST to version=1.0.0; we keep the type
# /metrics has always answered (and its OpenAPI schema documents), which is also what
# prometheus_client itself answers a scraper that sends no Accept header.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
REQUESTS = "visage_http_requests_total"
LATENCY = "visage_http_request_duration_seconds"


class _WithoutCreated:
    """The registry's metrics minus the ``*_created`` samples prometheus_client adds.

    /metrics never served them; prometheus_client can drop them only process-wide
    (``disable_created_metrics``), which would reach into any other registry in the process.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self.registry.collect():
            created = metric.name + "_created"
            metric.samples = [s for s in metric.samples if s.name != created]
            yield metric


class _ReadTogether:
    """Gauges read by one call at each scrape; those it does not answer are left out."""

    def __init__(self, helps: Mapping[str, str], read: Callable[[], Mapping[str, float]]) -> None:
        self.helps = dict(helps)
        self.read = read

    def describe(self) -> Iterator[Metric]:
        # Names known without a read: the registry checks them for clashes when registering.
        for name, help_text in self.helps.items():
            yield GaugeMetricFamily(name, help_text)

    def collect(self) -> Iterator[Metric]:
        values = self.read()
        for name, help_text in self.helps.items():
            if name in values:
                yield GaugeMetricFamily(name, help_text, value=values[name])


class Metrics:
    """Request counters and latency histograms (thread-safe), plus gauges read at scrape time."""

    def __init__(self, buckets: Sequence[float] = BUCKETS) -> None:
        self.registry = CollectorRegistry()
        self._requests = Counter(
            REQUESTS,
            "HTTP requests by endpoint, method and outcome.",
            ("endpoint", "method", "outcome"),
            registry=self.registry,
        )
        self._latency = Histogram(
            LATENCY,
            "HTTP request latency.",
            ("endpoint", "outcome"),
            buckets=tuple(sorted(buckets)),
            registry=self.registry,
        )

    def observe(self, *, endpoint: str, method: str, outcome: str, seconds: float | None) -> None:
        """Count one request and add its latency (None: counted only, its duration kept
        nowhere)."""
        self._requests.labels(endpoint=endpoint, method=method, outcome=outcome).inc()
        if seconds is not None:
            self._latency.labels(endpoint=endpoint, outcome=outcome).observe(seconds)

    def count(self, *, endpoint: str, method: str, outcome: str) -> int:
        """Requests counted so far for one label set."""
        labels = {"endpoint": endpoint, "method": method, "outcome": outcome}
        return int(self.registry.get_sample_value(REQUESTS, labels) or 0)

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """Add a gauge whose value is ``read()`` at each scrape."""
        Gauge(name, help_text, registry=self.registry).set_function(read)

    def gauges(self, helps: Mapping[str, str], read: Callable[[], Mapping[str, float]]) -> None:
        """Add the gauges named in ``helps`` (name: help text), their values read together by
        ``read()`` at each scrape: a gauge it leaves out is left out of that scrape, rather than
        the scrape failing or a stale value standing for a current one."""
        self.registry.register(_ReadTogether(helps, read))

    def render(self) -> bytes:
        """The exposition text (Prometheus text format 0.0.4)."""
        return generate_latest(_WithoutCreated(self.registry))  # type: ignore[arg-type]
