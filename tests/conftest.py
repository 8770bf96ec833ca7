"""Graphs under test run as `scaigrid up` subprocesses (own vhost, own port); this process stays unpatched."""
import json
import subprocess
import time
from pathlib import Path

import pytest

from scaigrid.runtime.testing import GraphProcess, bootstrap_key, throwaway_database  # noqa: F401

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


def audit_records(process: GraphProcess, expect: int = 0, timeout: float = 10, rid: str | None = None) -> list[dict]:
    """The after-step's records; waits until at least `expect` arrived, and the one of request `rid` if given
    (they travel as events, after the answer)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = process.audit_file.read_text().splitlines() if process.audit_file.exists() else []
        records = [json.loads(line) for line in lines]
        found = rid is None or any(r["id"] == rid for r in records)
        if (len(records) >= expect and found) or time.monotonic() > deadline:
            return records
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


@pytest.fixture(scope="module")
def database_url():
    """A fresh PostgreSQL database for one test module (dropped afterwards)."""
    with throwaway_database() as url:
        yield url


# FalkorDB: the Bolt server the knowledge graph is tested against (scripts/falkordb.sh) ------------------------

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "falkordb.sh"


def falkordb(command: str, folder: Path) -> str:
    done = subprocess.run(["bash", str(SCRIPT), command, str(folder)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"scripts/falkordb.sh {command} failed: {done.stderr}"
    return done.stdout.strip()


@pytest.fixture(scope="module")
def falkordb_folder(tmp_path_factory):
    """The folder of this module's FalkorDB (pid, ports, log); the server is stopped at the module's end."""
    folder = tmp_path_factory.mktemp("falkordb")
    falkordb("start", folder)
    yield folder
    falkordb("stop", folder)


@pytest.fixture(scope="module")
def falkordb_url(falkordb_folder):
    return falkordb("url", falkordb_folder)


@pytest.fixture(scope="session")
def models_root():
    """The local models, prepared once for the whole session: builds what is missing, verifies the rest (sha256
    manifests). Skipped where they are not built and the export extra is missing."""
    from scaigrid.adapters.backends import manifest
    from scaigrid.adapters.backends import prepare as prep

    root = prep.models_dir()
    ready = all(not manifest.problems(root / model_id, full=False) for model_id in prep.SPECS)
    if not ready and prep.missing_export():
        pytest.skip(f"local models are not built in {root} and the export extra is missing "
                    f"({', '.join(prep.missing_export())}): pip install -e '.[export]' && scaigrid models prepare")
    prep.prepare(root=root, progress=False, log=lambda line: None)
    return root


@pytest.fixture(scope="session")
def surfaces(tmp_path_factory):
    """The API surfaces' stack (tests/surfaces.py), shared by the modules that test them."""
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is installed by ./dev.sh")
    from surfaces import surface_stack

    with throwaway_database() as url, surface_stack(url, tmp_path_factory.mktemp("surfaces")) as stack:
        yield stack
