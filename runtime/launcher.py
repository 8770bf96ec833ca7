"""The supervisor behind `scaigrid up` and `scaigrid run`: one process per replica, restarted when it dies.

Stopping is ordered: ingress replicas (the gateway) drain first, then the functions they call.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from prometheus_client import values
from prometheus_client.multiprocess import mark_process_dead

from .graph import Graph
from .graph_check import is_ingress
from .metrics import serve_metrics
from .queue_watch import QueueWatch
from .settings import EXIT_CONFIG, EXIT_STORE_DOWN, Settings

BACKOFF_MAX = 10.0
HEALTHY_AFTER = 30.0  # a replica that lived this long starts its restart backoff afresh
SERVED_AFTER = 5.0  # a replica that lived this long got past its start-up checks


def _say(msg: str, **fields) -> None:
    """The supervisor's own JSON log line (same shape as the replicas')."""
    doc = {"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "level": fields.pop("level", "info"),
           "logger": "scaigrid.supervisor", "function": "supervisor", "msg": msg, **fields}
    print(json.dumps(doc), file=sys.stderr, flush=True)


@dataclass
class Replica:
    function: str
    index: int
    ingress: bool
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    next_start: float = 0.0
    failed_config: bool = field(default=False)
    proc_pid: int = 0
    served: bool = field(default=False)  # it got past its start-up checks once (lived past SERVED_AFTER)

    @property
    def label(self) -> str:
        return f"{self.function}[{self.index}]"


class Supervisor:
    """Starts, watches and stops the replicas of the chosen functions."""

    def __init__(self, graph: Graph, classes: dict[str, type], functions: dict[str, int], grace: float):
        self.graph = graph
        self.grace = grace
        self.replicas = [Replica(name, i, is_ingress(classes[name]))
                         for name, count in functions.items() for i in range(count)]
        self._stopping = False

    def _spawn(self, r: Replica) -> None:
        cmd = [sys.executable, "-m", "scaigrid.runtime.worker", "--graph", str(self.graph.file),
               "--function", r.function, "--replica", str(r.index)]
        r.proc = subprocess.Popen(cmd, env=os.environ.copy())
        r.proc_pid = r.proc.pid
        r.started_at = time.monotonic()
        _say("replica started", replica=r.label, pid=r.proc.pid)

    def start(self) -> None:
        for r in self.replicas:
            self._spawn(r)

    def _on_exit(self, r: Replica, code: int) -> None:
        lived = time.monotonic() - r.started_at
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR") and r.proc_pid:  # its live gauges must not outlive it
            mark_process_dead(r.proc_pid)
        r.served = r.served or lived > SERVED_AFTER
        if code == EXIT_STORE_DOWN and r.served:  # it was serving: the store will come back, so will it
            r.restarts = min(r.restarts, 2)  # retry every 2 s, not ever more rarely
        elif code in (EXIT_CONFIG, EXIT_STORE_DOWN):
            r.failed_config = True
            _say("replica cannot start; fix the problem above (not restarting)", level="error",
                 replica=r.label, exit_code=code)
            return
        if lived > HEALTHY_AFTER:
            r.restarts = 0
        delay = min(BACKOFF_MAX, 0.5 * (2 ** r.restarts)) if r.restarts else 0.0
        r.restarts += 1
        r.next_start = time.monotonic() + delay
        _say("replica exited; restarting", level="warning", replica=r.label, exit_code=code,
             signal=signal.Signals(-code).name if code < 0 else None, restart_in_s=delay)

    def watch(self) -> int:
        """Supervise until asked to stop; returns the exit code of `scaigrid up`."""
        while not self._stopping:
            for r in self.replicas:
                if r.proc is not None:
                    code = r.proc.poll()
                    if code is not None:
                        r.proc = None
                        self._on_exit(r, code)
                elif not r.failed_config and time.monotonic() >= r.next_start:
                    self._spawn(r)
            if self.replicas and all(r.failed_config for r in self.replicas):
                return EXIT_CONFIG
            time.sleep(0.1)
        return 0

    def request_stop(self, *_):
        self._stopping = True

    def stop(self) -> None:
        """SIGTERM ingress replicas first (they drain), then the rest; SIGKILL what outlives the grace period."""
        for group in ([r for r in self.replicas if r.ingress], [r for r in self.replicas if not r.ingress]):
            live = [r for r in group if r.proc is not None and r.proc.poll() is None]
            for r in live:
                r.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.grace + 5
            for r in live:
                try:
                    r.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    _say("replica did not stop in time; killing", level="warning", replica=r.label)
                    r.proc.kill()
                    r.proc.wait()
        _say("stopped")


def metrics_dir() -> None:
    """The replicas of one supervisor share a Prometheus multiprocess folder (unless the environment names one that
    several share), which its /metrics serves: the gateway's, or the supervisor's own metrics port."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="scaigrid-metrics-")
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
    # prometheus_client picked its value class at import (graph loading imported it): the supervisor's own gauges
    # (queue depths) must go to the folder too
    values.ValueClass = values.get_value_class()


def _serve_metrics(functions: dict[str, int], classes: dict[str, type], address: str) -> None:
    """A supervisor of functions with no HTTP port serves their replicas' /metrics (an ingress serves its own)."""
    if any(is_ingress(classes[name]) for name in functions):
        return
    where, error = serve_metrics(address)
    if error:
        _say("metrics port unavailable; the replicas run without their /metrics (set SCAIGRID_METRICS_ADDRESS)",
             level="warning", address=where, error=error)
    else:
        _say("metrics served", address=where, path="/metrics")


def supervise(graph: Graph, classes: dict[str, type], functions: dict[str, int], grace: float) -> int:
    metrics_dir()
    settings = Settings()
    _serve_metrics(functions, classes, settings.metrics_address)
    watch = QueueWatch(settings.amqp_uri, list(functions), _say)
    watch.start()
    sup = Supervisor(graph, classes, functions, grace)
    signal.signal(signal.SIGTERM, sup.request_stop)
    signal.signal(signal.SIGINT, sup.request_stop)
    sup.start()
    try:
        code = sup.watch()
    finally:
        sup.stop()
        watch.stop()
        mark_process_dead(os.getpid())  # its queue depths (live gauges) go with it
    return code
