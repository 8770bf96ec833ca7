"""Per-replica heartbeat, and the probe that reads it: liveness and readiness for functions with no HTTP port.

Every replica writes `<dir>/<function>.<replica>.json` every few seconds from a greenthread. A fresh file proves
the eventlet hub is not blocked (a greenthread got to run); its `broker` field says a round trip to RabbitMQ just
worked. The probe (`scaigrid health`, or `python -m scaigrid.runtime.deploy.health`, which imports nothing heavy
because Kubernetes runs it every few seconds) reads those files: live = fresh, ready = fresh + broker + not
draining. A probe in the pod sees only that pod's replicas, which an RPC to the function's queue could not.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

DIR_ENV = "SCAIGRID_HEARTBEAT_DIR"
INTERVAL_ENV = "SCAIGRID_HEARTBEAT_SECONDS"
INTERVAL = 5.0  # seconds between beats (tests shorten it through the environment)
MAX_AGE = 30.0  # a heartbeat older than this means a blocked hub or a dead process
BROKER_TIMEOUT = 3.0


def heartbeat_dir() -> Path:
    """$SCAIGRID_HEARTBEAT_DIR, else <tmp>/scaigrid-heartbeat."""
    return Path(os.environ.get(DIR_ENV) or Path(tempfile.gettempdir()) / "scaigrid-heartbeat")


def heartbeat_path(function: str, replica: int, folder: Path | None = None) -> Path:
    return (folder or heartbeat_dir()) / f"{function}.{replica}.json"


def write_heartbeat(path: Path, doc: dict) -> None:
    """Replace the file atomically: a probe never reads half a heartbeat."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def beat_forever(function: str, replica: int, amqp_uri: str, draining: Callable[[], bool],
                 interval: float | None = None) -> None:
    """The replica's heartbeat greenthread (see worker.py): one broker round trip and one file write per beat."""
    import eventlet
    from kombu import Connection

    interval = interval or float(os.environ.get(INTERVAL_ENV) or INTERVAL)
    path = heartbeat_path(function, replica)
    conn = None
    while True:
        broker = False
        try:
            # a dead broker can leave a socket read hanging; the timeout keeps the beat going
            with eventlet.Timeout(BROKER_TIMEOUT):
                if conn is None:
                    conn = Connection(amqp_uri, connect_timeout=BROKER_TIMEOUT)
                # amq.direct exists on every vhost: a passive declare is a cheap, always-valid round trip
                conn.default_channel.exchange_declare("amq.direct", "direct", passive=True)
            broker = True
        except (Exception, eventlet.Timeout):  # eventlet.Timeout is a BaseException
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.release()
            conn = None
        write_heartbeat(path, {"function": function, "replica": replica, "pid": os.getpid(), "ts": time.time(),
                               "broker": broker, "draining": bool(draining()), "interval": interval})
        eventlet.sleep(interval)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check(function: str | None = None, replica: int | None = None, ready: bool = False,
          max_age: float = MAX_AGE, folder: Path | None = None, now: float | None = None) -> tuple[bool, str]:
    """(healthy, one line saying why) for this host's replicas of `function` (all functions when None).

    Files of processes that are gone are skipped: a replica scaled away or restarted under a new pid is the
    supervisor's business, and its new process writes the same file within one beat.
    """
    folder = folder or heartbeat_dir()
    now = time.time() if now is None else now
    pattern = f"{function or '*'}.{'*' if replica is None else replica}.json"
    docs = []
    for path in sorted(folder.glob(pattern)):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being replaced right now, or not ours
        if _alive(int(doc.get("pid", 0))):
            docs.append(doc)
    what = f"{function or 'any function'}" + ("" if replica is None else f" replica {replica}")
    if not docs:
        return False, f"no heartbeat from {what} in {folder} (not started yet, or its process is gone)"
    for doc in docs:
        label = f"{doc['function']}[{doc['replica']}]"
        age = now - float(doc["ts"])
        if age > max_age:
            return False, f"{label}: last heartbeat {age:.0f}s ago (> {max_age:.0f}s): its event loop is blocked"
        if ready and doc.get("draining"):
            return False, f"{label}: draining (shutting down)"
        if ready and not doc.get("broker"):
            return False, f"{label}: cannot reach RabbitMQ"
    labels = ", ".join(f"{d['function']}[{d['replica']}]" for d in docs)
    return True, f"ok: {labels}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--function", default=None, help="function name (default: every replica on this host)")
    parser.add_argument("--replica", type=int, default=None, help="replica index (default: all)")
    parser.add_argument("--ready", action="store_true", help="readiness: also needs RabbitMQ and not draining")
    parser.add_argument("--max-age", type=float, default=MAX_AGE, help="seconds a heartbeat stays fresh")


def run(args: argparse.Namespace) -> int:
    """Exit 0 when healthy, 1 otherwise; one line on stdout either way (kubectl describe shows it)."""
    ok, line = check(args.function, args.replica, args.ready, args.max_age)
    print(line)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scaigrid-health", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
