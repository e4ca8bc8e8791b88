"""Request counters, search latency percentiles, and their Prometheus text exposition."""

from __future__ import annotations

import os
import resource
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping

import numpy as np

# Search latencies kept for the percentiles (the most recent ones).
LATENCY_WINDOW = 4096
QUANTILES = (0.5, 0.9, 0.99)


def resident_memory_bytes() -> int:
    """The process's resident set size now (Linux ``/proc``), else its peak (``getrusage``)."""
    try:
        with open(f"/proc/{os.getpid()}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Metrics:
    """Thread-safe counters of one service process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.queries_served = 0
        self.search_requests = 0
        self.items_added = 0
        self.items_deleted = 0
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._latency_sum = 0.0

    def request(self, method: str, route: str, status: int) -> None:
        """Count one finished request (``route`` is the route's template, never the raw path)."""
        with self._lock:
            self.requests[(method, route, status)] += 1

    def search(self, queries: int, seconds: float) -> None:
        """Record one answered search request of ``queries`` queries."""
        with self._lock:
            self.search_requests += 1
            self.queries_served += queries
            self._latencies.append(seconds)
            self._latency_sum += seconds

    def changed(self, added: int = 0, deleted: int = 0) -> None:
        with self._lock:
            self.items_added += added
            self.items_deleted += deleted

    def latency_quantiles(self) -> dict[float, float]:
        """Search latency quantiles (seconds) over the last :data:`LATENCY_WINDOW` searches."""
        with self._lock:
            values = np.array(self._latencies, dtype=np.float64)
        if not len(values):
            return {}
        return {q: float(np.quantile(values, q)) for q in QUANTILES}

    def snapshot(self) -> dict[str, float | int]:
        with self._lock:
            return {
                "queries_served": self.queries_served,
                "search_requests": self.search_requests,
                "items_added": self.items_added,
                "items_deleted": self.items_deleted,
                "latency_sum": self._latency_sum,
                "latency_window": len(self._latencies),
                "uptime_seconds": time.time() - self.started,
            }

    def prometheus(self, gauges: Mapping[str, tuple[float, str]]) -> str:
        """The Prometheus text format (version 0.0.4) of the counters and ``gauges``
        (name -> (value, help))."""
        snap = self.snapshot()
        lines: list[str] = []

        def metric(name: str, kind: str, text: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{name}{labels} {_number(value)}" for labels, value in samples)

        for name, (value, text) in gauges.items():
            metric(name, "gauge", text, [("", value)])
        metric(
            "quantrieve_queries_total",
            "counter",
            "Query images, items or embeddings searched.",
            [("", snap["queries_served"])],
        )
        metric(
            "quantrieve_items_added_total", "counter", "Items added.", [("", snap["items_added"])]
        )
        metric(
            "quantrieve_items_deleted_total",
            "counter",
            "Items deleted.",
            [("", snap["items_deleted"])],
        )
        quantiles = self.latency_quantiles()
        metric(
            "quantrieve_search_latency_seconds",
            "summary",
            "Search request latency (quantiles over the most recent searches).",
            [(f'{{quantile="{q}"}}', v) for q, v in quantiles.items()]
            # the summary's _sum and _count samples: the suffix goes on the name
            + [("_sum", snap["latency_sum"]), ("_count", snap["search_requests"])],
        )
        with self._lock:
            requests = sorted(self.requests.items())
        metric(
            "quantrieve_http_requests_total",
            "counter",
            "HTTP requests by method, route and status.",
            [
                (f'{{method="{m}",route="{_escape(r)}",status="{s}"}}', n)
                for (m, r, s), n in requests
            ],
        )
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)
