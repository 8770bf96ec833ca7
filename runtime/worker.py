"""One replica of one function: `python -m scaigrid.runtime.worker --graph F --function NAME`.

Patches eventlet before anything else, runs the function's container, and drains on SIGTERM.
"""
import eventlet

eventlet.monkey_patch()  # noqa: E402  (before any socket, thread or psycopg2 import)

import argparse  # noqa: E402
import gc  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

from nameko.runners import ServiceRunner  # noqa: E402
from nameko.web.server import WebServer  # noqa: E402
from prometheus_client.multiprocess import mark_process_dead  # noqa: E402

from . import logs, metrics, nameko_compat, tracing  # noqa: E402
from .deploy.health import beat_forever  # noqa: E402
from .graph import GraphError  # noqa: E402
from .graph_check import load_checked  # noqa: E402
from .lifecycle import inflight  # noqa: E402
from .preflight import StartupCheckFailed, StoreDown, check_stores  # noqa: E402
from .service import build_service, service_config  # noqa: E402
from .settings import EXIT_CONFIG, EXIT_STORE_DOWN, Settings  # noqa: E402

_log = logging.getLogger("scaigrid.worker")


def _stop_accepting(runner: ServiceRunner) -> None:
    for container in runner.containers:
        for ext in container.subextensions:
            if isinstance(ext, WebServer):
                nameko_compat.stop_accepting(ext)


def _drain_then_stop(runner: ServiceRunner, grace: float) -> None:
    _stop_accepting(runner)
    finished = inflight.drain(grace)
    logs.log(_log, logging.INFO, "drained" if finished else "grace period over; stopping with work in flight",
             in_flight=inflight.count)
    # stopping waits for RPC workers in flight; past the grace period they are killed
    with eventlet.Timeout(grace, False):
        runner.stop()
        return
    runner.kill()


def _assert_green_psycopg() -> None:
    """psycopg2 must wait through eventlet, or 20 concurrent queries run one by one (see docs/architecture.md)."""
    try:
        import psycopg2.extensions
    except ImportError:
        return
    if psycopg2.extensions.get_wait_callback() is None:
        raise RuntimeError("psycopg2 is not green: eventlet.monkey_patch() must run before psycopg2 is imported")


def _serve_own_metrics(address: str, replica: int) -> None:
    """/metrics of a replica that no supervisor watches: what an earlier run of it left in its folder is counted,
    but not its live gauges (a supervisor marks its dead replicas; here the replica does it for its predecessors)."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        for name in os.listdir(folder):
            pid = name.rsplit("_", 1)[-1].removesuffix(".db")
            if name.startswith("gauge_live") and pid.isdigit() and int(pid) != os.getpid():
                mark_process_dead(int(pid), folder)
    where, error = metrics.serve_metrics(address, replica)
    if error:
        logs.log(_log, logging.WARNING, "metrics port unavailable; this replica's metrics are not served",
                 address=where, error=error)
    else:
        logs.log(_log, logging.INFO, "metrics served", address=where, path="/metrics")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="scaigrid-worker")
    parser.add_argument("--graph", required=True)
    parser.add_argument("--function", required=True)
    parser.add_argument("--replica", type=int, default=0)
    parser.add_argument("--metrics", metavar="HOST:PORT", default=None,
                        help="serve this replica's /metrics at PORT + its replica index (systemd, where no supervisor "
                             "does); its PROMETHEUS_MULTIPROC_DIR must be its own")
    args = parser.parse_args(argv)
    _assert_green_psycopg()
    nameko_compat.install()
    # the after-step spool is this replica's: a restart of the same replica sends what the last one left
    os.environ.setdefault("SCAIGRID_SPOOL_NAME", f"{args.function}-{args.replica}")
    settings = Settings()
    logs.configure(args.function, settings.log_level, args.replica)
    tracing.configure(args.function, args.replica)  # before the stores' clients exist: they get instrumented
    try:
        graph, classes = load_checked(args.graph)
        if args.function not in graph.functions:
            raise GraphError([f"{args.graph}: no function '{args.function}'; one of: {', '.join(graph.functions)}"])
        cls = classes[args.function]
        check_stores(("rabbitmq",) + tuple(getattr(cls, "stores", ())), settings)
    except GraphError as exc:
        print(f"scaigrid: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except StoreDown as exc:
        print(f"scaigrid: {exc}", file=sys.stderr)
        return EXIT_STORE_DOWN
    runner = ServiceRunner(service_config(graph, args.function, settings))
    runner.add_service(build_service(graph, args.function, cls))

    stopping = []

    def on_term(signum, frame):
        if not stopping:
            stopping.append(eventlet.spawn(_drain_then_stop, runner, settings.grace_seconds))

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        runner.start()
    except StartupCheckFailed as exc:  # inline functions' extensions too: they set up inside this start
        # nothing has been served: exit as is (stopping the runner would run the hub, which hands the same
        # exit to this greenthread again from each greenthread that waited on the failed one)
        print(f"scaigrid: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    metrics.set_build_info()
    if args.metrics:
        _serve_own_metrics(args.metrics, args.replica)
    # liveness/readiness for probes (scaigrid health): a greenthread that runs proves the hub is not blocked
    eventlet.spawn(beat_forever, args.function, args.replica, settings.amqp_uri, lambda: inflight.draining)
    logs.log(_log, logging.INFO, "replica started", pool=graph.functions[args.function].pool)
    # what start-up made lives as long as the process: out of the collector's sight, a full collection no longer
    # walks it (~150k objects in a gateway: one full pass was measured at tens of milliseconds, a p99 outlier)
    gc.collect()
    gc.freeze()
    runner.wait()
    if stopping:
        stopping[0].wait()
    tracing.shutdown()  # the spans of the last requests go out before the process ends
    return 0


if __name__ == "__main__":
    sys.exit(main())
