"""Test and bench helpers: run a graph with `scaigrid up` as a subprocess, on its own vhost and port.

For the product's tests, bench/ and a user's tests of their own functions alike.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

SCAIGRID = [sys.executable, "-m", "scaigrid.runtime.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


class Vhost:
    """A throw-away RabbitMQ vhost, so queues left by one test never feed another."""

    def __init__(self):
        self.name = f"sg-test-{uuid.uuid4().hex[:10]}"
        rabbitmqctl("add_vhost", self.name)
        rabbitmqctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")
        self.uri = f"amqp://guest:guest@127.0.0.1:5672/{self.name}"

    def delete(self) -> None:
        rabbitmqctl("delete_vhost", self.name)


class GraphProcess:
    """`scaigrid up --graph FILE` with its logs in a file; knows the pids of its replicas."""

    def __init__(self, graph: str | Path, tmp: Path, env: dict | None = None, grace: float = 10):
        self.vhost = Vhost()
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"graph-{self.port}.log"
        self.env = {**os.environ, "SCAIGRID_AMQP_URI": self.vhost.uri,
                    "SCAIGRID_HTTP_ADDRESS": f"127.0.0.1:{self.port}",
                    "SCAIGRID_GRACE_SECONDS": str(grace),
                    "SCAIGRID_SPOOL_DIR": str(tmp / f"spool-{self.port}"),
                    # shared by every process of this graph, `scaigrid run` ones included
                    "PROMETHEUS_MULTIPROC_DIR": str(tmp / f"metrics-{self.port}"), **(env or {})}
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([*SCAIGRID, "up", "--graph", str(graph)], env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"scaigrid up exited {self.proc.returncode}:\n{self.log_path.read_text()}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"graph not ready in {timeout}s:\n{self.log_path.read_text()[-4000:]}")

    def log_lines(self) -> list[dict]:
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def replica_pids(self, function: str) -> list[int]:
        """Pids of the live replicas of `function` (latest start per replica index)."""
        latest: dict[str, int] = {}
        for doc in self.log_lines():
            if doc.get("logger") == "scaigrid.supervisor" and doc.get("msg") == "replica started" \
                    and doc["replica"].startswith(f"{function}["):
                latest[doc["replica"]] = doc["pid"]
        return list(latest.values())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self.vhost.delete()
        return self.proc.returncode


PG_ADMIN = os.environ.get("SCAIGRID_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextmanager
def throwaway_database(prefix: str = "sg_test") -> Iterator[str]:
    """A fresh PostgreSQL database (its URL), dropped afterwards even if connections are left open."""
    import psycopg2

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(PG_ADMIN)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        admin.cursor().execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.close()


def bootstrap_key(database_url: str) -> str:
    """`scaigrid admin bootstrap` as an operator runs it: the key is the last line."""
    result = subprocess.run([*SCAIGRID, "admin", "bootstrap"], env={**os.environ, "SCAIGRID_DATABASE_URL": database_url},
                            capture_output=True, text=True, timeout=120, check=True)
    return result.stdout.strip().splitlines()[-1]


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]
