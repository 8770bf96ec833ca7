"""Prometheus metrics of the runtime: per-step, per-call and per-route latency, errors, saturation; the registry a
function's /metrics serves (its replicas' multiprocess folder) and the server that serves it where there is no HTTP
port (docs/observability.md)."""
from __future__ import annotations

import glob
import os
import platform
import time
from importlib.metadata import PackageNotFoundError, version

import eventlet
from nameko.extensions import DependencyProvider
from nameko.web.handlers import HttpRequestHandler
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

from .inline import INLINE_CONFIG_KEY

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
FUNCTION_SECONDS = Histogram("scaigrid_function_seconds", "Time a replica spent serving one call of its function "
                             "(RPC, event or batch)", ["function", "method", "outcome"], buckets=BUCKETS)
IN_FLIGHT = Gauge("scaigrid_in_flight", "Calls the function's replicas are serving now", ["function"],
                  multiprocess_mode="livesum")
WORKER_CAPACITY = Gauge("scaigrid_worker_capacity", "Concurrent workers the function's replicas allow (graph.yaml "
                        "pool); saturation is in_flight / capacity", ["function"], multiprocess_mode="livesum")
# livemax: the supervisors that poll a queue read the same number; one that stopped takes its reading with it
QUEUE_DEPTH = Gauge("scaigrid_queue_depth", "Messages ready in the function's RPC queue (polled by its supervisor)",
                    ["function"], multiprocess_mode="livemax")
BUILD_INFO = Gauge("scaigrid_build_info", "1, labelled with the running version", ["version", "python"],
                   multiprocess_mode="livemax")


class _SettledFiles(MultiProcessCollector):
    """Leaves out a file a process has just created and not yet sized: prometheus_client opens it and then extends
    it, and reading it in between fails the whole scrape ('unpack_from requires a buffer of at least 4 bytes', seen
    once in a test run). A file that has a size stays readable."""

    def collect(self):
        files = [f for f in glob.glob(os.path.join(self._path, "*.db")) if os.path.getsize(f) > 0]
        return self.merge(files, accumulate=True)


def host_registry() -> CollectorRegistry | None:
    """A registry of every process writing to this multiprocess folder (the replicas of a pod, a container, a
    `scaigrid up`) for /metrics, or None (this process's own default registry) when there is no such folder."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    registry = CollectorRegistry()
    _SettledFiles(registry)
    return registry


def parse_address(address: str) -> tuple[str, int]:
    """'host:port' (the form of SCAIGRID_HTTP_ADDRESS) as (host, port)."""
    host, _, port = address.rpartition(":")
    return host or "0.0.0.0", int(port)  # noqa: S104  (a bare ':9464' means every interface, as it does to a server)


def serve_metrics(address: str, offset: int = 0) -> tuple[str, str | None]:
    """Serve /metrics of this multiprocess folder at `address` (its port + `offset`) on prometheus_client's own
    server, in a daemon thread: (where, None), or (where, why not) when the port cannot be had; the caller says so
    in one line and goes on serving its function."""
    host, port = parse_address(address)
    where = f"{host}:{port + offset}"
    try:
        start_http_server(port + offset, host, registry=host_registry() or REGISTRY)
    except OSError as exc:
        return where, exc.strerror or str(exc)
    return where, None


def set_build_info() -> None:
    """scaigrid_build_info{version, python} = 1 for this process."""
    try:
        release = version("scaigrid")
    except PackageNotFoundError:  # a checkout run without installing
        release = "unknown"
    BUILD_INFO.labels(release, platform.python_version()).set(1)


class CallMetrics(DependencyProvider):
    """Times every worker of the function (scaigrid_function_seconds: one histogram observe per call, nothing more
    on the hot path) and counts those running: a plain counter per call, which a greenthread copies to
    scaigrid_in_flight once a second. A copy hosted inline in a caller has no capacity of its own (its calls run in
    the caller's workers) and counts in flight only when its function has no replicas. HTTP requests are counted
    in flight but not timed here: the gateway times them per route (scaigrid_request_seconds)."""

    SAMPLE_EVERY_S = 1.0

    def setup(self):
        config = self.container.config
        self.function = config.get("SCAIGRID_FUNCTION") or self.container.service_name
        self.inline = bool(config.get(INLINE_CONFIG_KEY))
        self.running = 0
        self._timers: dict[tuple[str, bool], object] = {}  # (method, ok) -> histogram child: bounded by methods
        if not self.inline:
            WORKER_CAPACITY.labels(self.function).set(int(config.get("max_workers") or 10))

    def start(self):
        # an inline copy of a function that has replicas leaves in-flight to them: saturation is of their workers
        if not self.inline or not int(self.container.config.get("SCAIGRID_REPLICAS", 0)):
            self.container.spawn_managed_thread(self._sample)

    def _sample(self) -> None:
        gauge = IN_FLIGHT.labels(self.function)
        while True:
            gauge.set(self.running)
            eventlet.sleep(self.SAMPLE_EVERY_S)

    def worker_setup(self, worker_ctx):
        worker_ctx.scaigrid_started = time.perf_counter()
        self.running += 1

    def worker_result(self, worker_ctx, result=None, exc_info=None):
        elapsed = time.perf_counter() - getattr(worker_ctx, "scaigrid_started", time.perf_counter())
        self.running -= 1
        if isinstance(worker_ctx.entrypoint, HttpRequestHandler):
            return
        key = (worker_ctx.entrypoint.method_name, exc_info is None)
        timer = self._timers.get(key)
        if timer is None:
            timer = self._timers[key] = FUNCTION_SECONDS.labels(self.function, key[0], "ok" if key[1] else "error")
        timer.observe(elapsed)
