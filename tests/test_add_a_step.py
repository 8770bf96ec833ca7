"""docs/adding-a-step.md, done literally: its Python and YAML blocks, outside the package, run remote and inline."""
import re
from pathlib import Path

import httpx

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-step.md"


def doc_block(lang: str) -> str:
    return re.search(rf"```{lang}\n(.*?)```", DOC.read_text(), re.S).group(1)


def user_project(tmp_path: Path, placement: str) -> Path:
    project = tmp_path / f"project-{placement}"
    (project / "my_steps").mkdir(parents=True)
    (project / "my_steps" / "wordcount.py").write_text(doc_block("python"))
    graph = doc_block("yaml")
    assert "placement: remote" in graph
    (project / "graph.yaml").write_text(graph.replace("placement: remote", f"placement: {placement}"))
    return project / "graph.yaml"


def pids_answering(graph, n=30) -> set:
    pids = set()
    for _ in range(n):
        r = httpx.post(graph.base_url + "/v1/wordcount", json={"text": "one two three"}, timeout=10)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["words"] == 3 and body["unit"] == "words"
        pids.add(body["pid"])
    return pids


def test_new_step_runs_remote_with_its_replicas(start_graph, tmp_path):
    graph = start_graph(user_project(tmp_path, "remote"))
    pids = pids_answering(graph)
    assert pids == set(graph.replica_pids("wordcount")) and len(pids) == 2
    assert not pids & set(graph.replica_pids("gateway"))


def test_same_step_runs_inline_in_the_gateway(start_graph, tmp_path):
    graph = start_graph(user_project(tmp_path, "inline"))
    assert pids_answering(graph, 5) == set(graph.replica_pids("gateway"))
