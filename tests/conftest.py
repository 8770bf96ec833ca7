"""Graphs under test run as `scaigrid up` subprocesses (own vhost, own port); this process stays unpatched."""
import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from scaigrid.runtime.testing import SCAIGRID, GraphProcess

GRAPHS = Path(__file__).parent / "graphs"


def launch(graph, tmp: Path, env: dict | None = None, grace: float = 10) -> GraphProcess:
    audit = tmp / "audit.jsonl"
    process = GraphProcess(graph if Path(graph).is_absolute() else GRAPHS / graph, tmp,
                           env={"SCAIGRID_TEST_AUDIT_FILE": str(audit), **(env or {})}, grace=grace)
    process.audit_file = audit
    try:
        process.wait_ready()
    except Exception:
        process.stop()
        raise
    return process


def audit_records(process: GraphProcess, expect: int = 0, timeout: float = 10) -> list[dict]:
    """The after-step's records; waits until at least `expect` arrived (they travel as events)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = process.audit_file.read_text().splitlines() if process.audit_file.exists() else []
        if len(lines) >= expect or time.monotonic() > deadline:
            return [json.loads(line) for line in lines]
        time.sleep(0.05)


@pytest.fixture(scope="module")
def mixed_graph(tmp_path_factory):
    """tests/graphs/mixed.yaml running for a whole test module."""
    process = launch("mixed.yaml", tmp_path_factory.mktemp("mixed"))
    yield process
    process.stop()


@pytest.fixture
def start_graph(tmp_path):
    """Start a graph for one test; SIGTERM at its end."""
    started = []

    def start(graph="mixed.yaml", env: dict | None = None, grace: float = 10) -> GraphProcess:
        started.append(launch(graph, tmp_path, env, grace))
        return started[-1]

    yield start
    for process in started:
        process.stop()


PG_ADMIN = os.environ.get("SCAIGRID_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="module")
def database_url():
    """A fresh PostgreSQL database for one test module (dropped afterwards)."""
    import psycopg2

    name = f"sg_test_{uuid.uuid4().hex[:12]}"
    conn = psycopg2.connect(PG_ADMIN)
    conn.autocommit = True
    conn.cursor().execute(f'CREATE DATABASE "{name}"')
    yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    conn.cursor().execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    conn.close()


def bootstrap_key(database_url: str) -> str:
    """`scaigrid admin bootstrap` as an operator runs it: the key is the last line."""
    result = subprocess.run([*SCAIGRID, "admin", "bootstrap"], env={**os.environ, "SCAIGRID_DATABASE_URL": database_url},
                            capture_output=True, text=True, timeout=120, check=True)
    return result.stdout.strip().splitlines()[-1]
