import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support.graph_process import GraphProcess  # noqa: E402

GRAPHS = Path(__file__).parent / "graphs"


@pytest.fixture
def audit_file(tmp_path):
    return tmp_path / "audit.jsonl"


@pytest.fixture
def start_graph(tmp_path, audit_file):
    """Start a graph file as `scaigrid up` would; stopped (SIGTERM) at the end of the test."""
    started = []

    def start(name: str = "mixed.yaml", env: dict | None = None, grace: float = 10) -> GraphProcess:
        graph = GraphProcess(GRAPHS / name if not os.path.isabs(name) else name, tmp_path,
                             env={"SCAIGRID_TEST_AUDIT_FILE": str(audit_file), **(env or {})}, grace=grace)
        started.append(graph)
        graph.wait_ready()
        return graph

    yield start
    for graph in started:
        graph.stop()
