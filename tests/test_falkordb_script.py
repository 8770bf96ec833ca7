"""scripts/falkordb.sh, the knowledge graph's server for development and tests: started and stopped 30 times in a
row, each start answering on Bolt (the official neo4j driver) and each stop leaving no server behind. It used to
read redis-server's pid file while the daemon was still writing it, take the empty pid for a dead server, and
stop the server it had just started (one `./dev.sh up` in a few)."""
import os
import subprocess
from pathlib import Path

import pytest

neo4j = pytest.importorskip("neo4j")
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "falkordb.sh"


def run(command: str, folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), command, str(folder)], capture_output=True, text=True, timeout=60)


def test_thirty_starts_and_stops_in_a_row(tmp_path):
    for attempt in range(30):
        started = run("start", tmp_path)
        assert started.returncode == 0, (attempt, started.stderr)
        url = started.stdout.strip()
        assert url.startswith("bolt://127.0.0.1:") and run("url", tmp_path).stdout.strip() == url
        pid = int((tmp_path / "redis.pid").read_text())
        with neo4j.GraphDatabase.driver(url, auth=None) as driver:
            driver.verify_connectivity()
        assert run("start", tmp_path).stdout.strip() == url  # a second start finds the running one
        assert run("stop", tmp_path).returncode == 0
        assert not (tmp_path / "redis.pid").exists()
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert run("url", tmp_path).returncode == 1  # none runs
