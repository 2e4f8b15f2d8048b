"""Prometheus text-format metrics of the HTTP API (no personal data: route templates only).

``visage_http_requests_total{endpoint, method, outcome}`` counts requests,
``visage_http_request_duration_seconds{endpoint, outcome}`` is their latency histogram, and
gauges (gallery size, analytics frames) are passed in at render time. ``endpoint`` is the route
template (``/v1/subjects/{pid}``), never the requested path, so no pid reaches a label.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

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


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _num(x: float) -> str:
    x = float(x)
    return str(int(x)) if x.is_integer() and abs(x) < 2**53 else repr(x)


class Metrics:
    """Thread-safe request counters and latency histograms."""

    def __init__(self, buckets: Sequence[float] = BUCKETS) -> None:
        self.buckets = tuple(sorted(buckets))
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, str], int] = {}
        self._hist: dict[tuple[str, str], list[float]] = {}

    def observe(self, *, endpoint: str, method: str, outcome: str, seconds: float) -> None:
        """Count one request and add its latency."""
        with self._lock:
            key = (endpoint, method, outcome)
            self._counts[key] = self._counts.get(key, 0) + 1
            h = self._hist.get((endpoint, outcome))
            if h is None:
                # bucket counts..., sum, count
                h = [0.0] * (len(self.buckets) + 2)
                self._hist[(endpoint, outcome)] = h
            for i, b in enumerate(self.buckets):
                if seconds <= b:
                    h[i] += 1
            h[-2] += seconds
            h[-1] += 1

    def count(self, *, endpoint: str, method: str, outcome: str) -> int:
        """Requests counted so far for one label set."""
        with self._lock:
            return self._counts.get((endpoint, method, outcome), 0)

    def render(self, gauges: Mapping[str, tuple[str, float]] | None = None) -> str:
        """The exposition text; ``gauges`` maps a metric name to ``(help, value)``."""
        lines = [
            "# HELP visage_http_requests_total HTTP requests by endpoint, method and outcome.",
            "# TYPE visage_http_requests_total counter",
        ]
        with self._lock:
            counts = sorted(self._counts.items())
            hist = sorted((k, list(v)) for k, v in self._hist.items())
        for (endpoint, method, outcome), n in counts:
            lab = _labels([("endpoint", endpoint), ("method", method), ("outcome", outcome)])
            lines.append(f"visage_http_requests_total{lab} {n}")
        lines += [
            "# HELP visage_http_request_duration_seconds HTTP request latency.",
            "# TYPE visage_http_request_duration_seconds histogram",
        ]
        for (endpoint, outcome), h in hist:
            base = [("endpoint", endpoint), ("outcome", outcome)]
            for b, c in zip(self.buckets, h, strict=False):
                lab = _labels([*base, ("le", _num(b))])
                lines.append(f"visage_http_request_duration_seconds_bucket{lab} {int(c)}")
            lab = _labels([*base, ("le", "+Inf")])
            lines.append(f"visage_http_request_duration_seconds_bucket{lab} {int(h[-1])}")
            lines.append(f"visage_http_request_duration_seconds_sum{_labels(base)} {h[-2]!r}")
            lines.append(f"visage_http_request_duration_seconds_count{_labels(base)} {int(h[-1])}")
        for name, (help_text, value) in sorted((gauges or {}).items()):
            lines += [
                f"# HELP {name} {help_text}",
                f"# TYPE {name} gauge",
                f"{name} {_num(value)}",
            ]
        return "\n".join(lines) + "\n"
