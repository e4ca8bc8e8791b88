"""The service's metrics: Prometheus metrics through ``prometheus_client``, and the counters and
search latency percentiles of ``GET /stats``.

Prometheus metrics (``GET /metrics``, text format 0.0.4):

- ``quantrieve_http_requests_total{method,route,status}``: requests answered, by the route's
  template (never the raw path);
- ``quantrieve_http_request_duration_seconds{method,route}``: request latency, histogram (when
  the caller passes the request's duration);
- ``quantrieve_search_duration_seconds``: latency of an answered search request, histogram;
- ``quantrieve_queries_total``, ``quantrieve_items_added_total``,
  ``quantrieve_items_deleted_total``;
- ``quantrieve_index_items``, ``quantrieve_index_segments``, ``quantrieve_index_generation``,
  ``quantrieve_index_deleted_items`` (gauges read from the served index at each scrape);
- ``quantrieve_build_info{version,torch_version,python_version}``;
- ``process_*``: CPU seconds, resident and virtual memory, open files, start time
  (``prometheus_client.ProcessCollector``, Linux).

Every :class:`Metrics` has its own ``CollectorRegistry`` (never the global one), so several apps
in one process count apart.

Several worker processes (``quantrieve serve --workers N --read-only``) use
``prometheus_client``'s multiprocess mode: each worker writes its counters and histograms to
files in one directory, and whichever worker answers a scrape sums all of them, so the counts and
histograms are those of the whole service. The directory is ``PROMETHEUS_MULTIPROC_DIR`` when
set (it must exist and be emptied before the service starts), else one made for this service
under the temporary directory (named after the ``quantrieve serve`` process, which started the
workers; directories of services no longer running are removed). In that mode the ``process_*``
metrics are those of the worker that answered (a scrape cannot read another process's memory
through the shared files), the index gauges are that worker's (all serve the same read-only
index), and ``/stats`` counts that worker's requests only.
"""

from __future__ import annotations

import collections
import os
import platform
import resource
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

# Search latencies kept for the percentiles of /stats (the most recent ones).
LATENCY_WINDOW = 4096
QUANTILES = (0.5, 0.9, 0.99)

# prometheus_client's multiprocess directory, and the variable through which `quantrieve serve`
# hands its options to its worker processes (quantrieve.serve.app.OPTIONS_ENV; set only when it
# runs more than one worker).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
WORKERS_ENV = "QUANTRIEVE_SERVE_OPTIONS"
WORKERS_DIR_PREFIX = "quantrieve-metrics-"

# Latency buckets in seconds: a query is a millisecond or so, a batch of uploads up to seconds.
LATENCY_BUCKETS = (
    0.0005,
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
    30.0,
)


def _process_start(pid: int) -> str:
    """The start time of a process in clock ticks since boot (``/proc``), "" if unknown: with
    the pid it names a process, even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _join_workers_directory() -> None:
    """In a worker process of ``quantrieve serve --workers N``: point ``prometheus_client`` at the
    multiprocess directory shared by the workers of this service (its parent process), made
    here by the first worker, and remove those of services no longer running.

    Runs before ``prometheus_client`` is imported: it chooses its mode once, at import."""
    if WORKERS_ENV not in os.environ or os.environ.get(MULTIPROC_ENV):
        return
    parent = os.getppid()
    base = Path(tempfile.gettempdir())
    for stale in base.glob(f"{WORKERS_DIR_PREFIX}*"):
        pid = stale.name[len(WORKERS_DIR_PREFIX) :].split("-")[0]
        if pid.isdigit() and int(pid) != parent and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    directory = base / f"{WORKERS_DIR_PREFIX}{parent}-{_process_start(parent)}"
    directory.mkdir(mode=0o700, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(directory)


_join_workers_directory()

# imported after the multiprocess directory is chosen (above)
from prometheus_client import (  # noqa: E402
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric  # noqa: E402
from prometheus_client.multiprocess import MultiProcessCollector  # noqa: E402

# what generate_latest writes: the text format 0.0.4
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def multiprocess_directory() -> str | None:
    """The directory of ``prometheus_client``'s multiprocess mode, None in single-process mode."""
    from prometheus_client import values

    if values.ValueClass is values.MutexValue:
        return None
    return os.environ.get(MULTIPROC_ENV) or None


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


def build_info() -> dict[str, str]:
    """The versions behind ``quantrieve_build_info`` (``torch_version`` "none" in a process
    that embeds queries with onnxruntime and has no torch)."""
    from importlib.metadata import PackageNotFoundError, version

    from quantrieve import __version__

    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = "none"
    return {
        "version": __version__,
        "torch_version": torch_version,
        "python_version": platform.python_version(),
    }


class _Scrape:
    """One scrape: the families of ``sources``, then the index gauges and the build info."""

    def __init__(
        self,
        sources: Iterable[object],
        gauges: Mapping[str, tuple[float, str]],
        info: Mapping[str, str],
    ) -> None:
        self.sources = sources
        self.gauges = gauges
        self.info = info

    def collect(self) -> Iterator[Metric]:
        for source in self.sources:
            yield from source.collect()  # type: ignore[attr-defined]
        for name, (value, text) in self.gauges.items():
            yield GaugeMetricFamily(name, text, value=value)
        build = InfoMetricFamily("quantrieve_build", "Versions of quantrieve, torch and Python.")
        build.add_metric([], dict(self.info))
        yield build


class Metrics:
    """The metrics of one service (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.requests: collections.Counter[tuple[str, str, int]] = collections.Counter()
        self.queries_served = 0
        self.search_requests = 0
        self.items_added = 0
        self.items_deleted = 0
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._latency_sum = 0.0
        self.registry = CollectorRegistry()
        registry = self.registry
        self._http_requests = Counter(
            "quantrieve_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self._http_duration = Histogram(
            "quantrieve_http_request_duration_seconds",
            "HTTP request latency, by method and route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._search_duration = Histogram(
            "quantrieve_search_duration_seconds",
            "Latency of an answered search request (embedding the queries and searching).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._queries = Counter(
            "quantrieve_queries", "Query images, items or embeddings searched.", registry=registry
        )
        self._added = Counter("quantrieve_items_added", "Items added.", registry=registry)
        self._deleted = Counter("quantrieve_items_deleted", "Items deleted.", registry=registry)
        self._process = ProcessCollector(registry=None)
        self._info = build_info()

    def request(self, method: str, route: str, status: int, seconds: float | None = None) -> None:
        """Count one finished request (``route`` is the route's template, never the raw path)
        and, when given, its duration."""
        with self._lock:
            self.requests[(method, route, status)] += 1
        self._http_requests.labels(method, route, str(status)).inc()
        if seconds is not None:
            self._http_duration.labels(method, route).observe(seconds)

    def search(self, queries: int, seconds: float) -> None:
        """Record one answered search request of ``queries`` queries."""
        with self._lock:
            self.search_requests += 1
            self.queries_served += queries
            self._latencies.append(seconds)
            self._latency_sum += seconds
        self._queries.inc(queries)
        self._search_duration.observe(seconds)

    def changed(self, added: int = 0, deleted: int = 0) -> None:
        """Count items added and deleted."""
        with self._lock:
            self.items_added += added
            self.items_deleted += deleted
        if added:
            self._added.inc(added)
        if deleted:
            self._deleted.inc(deleted)

    def latency_quantiles(self) -> dict[float, float]:
        """Search latency quantiles (seconds) over the last :data:`LATENCY_WINDOW` searches of
        this process."""
        with self._lock:
            values = np.array(self._latencies, dtype=np.float64)
        if not len(values):
            return {}
        return {q: float(np.quantile(values, q)) for q in QUANTILES}

    def snapshot(self) -> dict[str, float | int]:
        """This process's counts, for ``/stats``."""
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

    def exposition(self, gauges: Mapping[str, tuple[float, str]]) -> bytes:
        """The Prometheus text format (version 0.0.4, :data:`CONTENT_TYPE`) of every metric,
        with ``gauges`` (name -> (value, help)) read now from the served index."""
        directory = multiprocess_directory()
        sources: list[object]
        if directory is None:
            sources = [self.registry, self._process]
        else:  # every worker's counters and histograms, summed; this worker's process
            sources = [MultiProcessCollector(None, path=directory), self._process]
        return generate_latest(_Scrape(sources, gauges, self._info))  # type: ignore[arg-type]

    def prometheus(self, gauges: Mapping[str, tuple[float, str]]) -> str:
        """:meth:`exposition` as text."""
        return self.exposition(gauges).decode()
