"""Prometheus metrics of the runtime: per-step and per-route latency, errors; the host-wide registry /metrics serves."""
from __future__ import annotations

import glob
import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

STEP_SECONDS = Histogram("scaigrid_step_seconds", "Time a route step took, as seen by the caller",
                         ["route", "step", "placement"], buckets=BUCKETS)
STEP_ERRORS = Counter("scaigrid_step_errors_total", "Steps that raised", ["route", "step", "code"])
REQUEST_SECONDS = Histogram("scaigrid_request_seconds", "Whole request time in the gateway",
                            ["route", "status"], buckets=BUCKETS)
AFTER_PUBLISHED = Counter("scaigrid_after_events_total", "After-steps handed to the broker", ["step"])
# labelled even where one value would do: an unlabelled multiprocess metric opens its file at import
STREAMS_OPEN = Gauge("scaigrid_streams_open", "Token streams a gateway process is relaying (listener entries)",
                     ["function"], multiprocess_mode="livesum")



class _SettledFiles(MultiProcessCollector):
    """Leaves out a file a process has just created and not yet sized: prometheus_client opens it and then extends
    it, and reading it in between fails the whole scrape ('unpack_from requires a buffer of at least 4 bytes', seen
    once in a test run). A file that has a size stays readable."""

    def collect(self):
        files = [f for f in glob.glob(os.path.join(self._path, "*.db")) if os.path.getsize(f) > 0]
        return self.merge(files, accumulate=True)


def host_registry() -> CollectorRegistry | None:
    """A registry of every replica on this host (their multiprocess folder) for /metrics, or None (this process's
    own default registry) when there is no such folder."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    registry = CollectorRegistry()
    _SettledFiles(registry)
    return registry
