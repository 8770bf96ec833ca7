"""graph.yaml: schema, checks that name file:line and the fix, `graph show`, the published JSON Schema."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from scaigrid.runtime.graph import GraphError, json_schema, load_graph
from scaigrid.runtime.graph_check import load_checked

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "tests" / "demo_functions"

GOOD = f"""\
version: 1
path: [{DEMO}]
functions:
  gateway:
    entry: scaigrid.functions.gateway.service:Gateway
  tag:
    entry: demo:Tag
    replicas: 2
  gate:
    entry: demo:Gate
    placement: inline
routes:
  pipeline:
    http: POST /pipeline
    steps:
      - gate.check
      - step: tag.add
        timeout: 2
"""


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "graph.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def scaigrid(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scaigrid.runtime.cli", *args], capture_output=True, text=True,
                          timeout=60)


def problems_of(path: Path) -> list[str]:
    with pytest.raises(GraphError) as info:
        load_checked(path)
    return info.value.problems


def test_good_graph_loads_with_step_options(tmp_path):
    graph, classes = load_checked(write(tmp_path, GOOD))
    route = graph.routes["pipeline"]
    assert [s.step for s in route.step_specs()] == ["gate.check", "tag.add"]
    assert graph.timeout_of(route.step_specs()[1]) == 2
    assert graph.timeout_of(route.step_specs()[0]) == 30  # the function's default
    assert graph.functions["gate"].placement == "inline"
    assert classes["tag"].__name__ == "Tag"


def test_when_holds_only_for_a_present_non_empty_value():
    from scaigrid.runtime.graph import StepSpec

    step = StepSpec(step="rag.augment", when="request.body.rag")
    for body, holds in (({"rag": {"collections": ["a"]}}, True), ({"rag": 0}, True), ({"rag": None}, False),
                        ({"rag": {}}, False), ({"rag": []}, False), ({}, False), ({"rag": False}, False)):
        assert step.applies({"request": {"body": body}}) is holds, body
    assert step.applies({"request": {"body": "not a dict"}}) is False
    assert StepSpec(step="a.b").applies({}) is True


@pytest.mark.parametrize("mutate, line, needle", [
    (lambda t: t.replace("- gate.check", "- nope.check"), 16, "unknown function 'nope'"),
    (lambda t: t.replace("- gate.check", "- gate.missing"), 16, "has no method 'missing'"),
    (lambda t: t.replace("replicas: 2", "replicas: two"), 8, "functions.tag.replicas"),
    (lambda t: t.replace("      - gate.check\n      - step: tag.add\n        timeout: 2\n", "      []\n")
        .replace("steps:\n", "steps:"), 15, "at least 1 item"),
    (lambda t: t.replace("  gate:\n", "  tag:\n"), 9, "duplicate name 'functions.tag'"),
    (lambda t: t.replace("routes:", "  lonely:\n    entry: demo:Shout\nroutes:"), 12, "'lonely' is unreachable"),
    (lambda t: t.replace("demo:Tag", "demo:Nope"), 7, "cannot import 'demo:Nope'"),
    (lambda t: t.replace("placement: inline", "placement: sideways"), 11, "placement"),
    (lambda t: t.replace("POST /pipeline", "FETCH pipeline"), 14, "is not 'METHOD /path'"),
    (lambda t: t.replace("    replicas: 2\n", "    replicas: 0\n"), 8, "replicas: 0"),
    (lambda t: t.replace("timeout: 2", "timeout: 2\n        when: request.body[rag]"), 19, "when"),
    (lambda t: t.replace("    replicas: 2\n", "    replicas: 2\n    emits: [tag.add]\n"), 9, "no route's 'after' step"),
])
def test_bad_graph_names_file_line_and_fix(tmp_path, mutate, line, needle):
    path = write(tmp_path, mutate(GOOD))
    problems = problems_of(path)
    hit = [p for p in problems if needle in p]
    assert hit, problems
    assert hit[0].startswith(f"{path}:{line}:") or hit[0].startswith(f"{path.resolve()}:{line}:"), hit[0]
    assert ";" in hit[0]  # every message ends with what to do


def test_not_an_rpc_method(tmp_path):
    functions = tmp_path / "fns"
    functions.mkdir()
    (functions / "plain.py").write_text("class Plain:\n    name = 'plain'\n    def go(self, envelope):\n"
                                        "        return envelope\n")
    text = GOOD.replace(f"path: [{DEMO}]", f"path: [{DEMO}, {functions}]").replace("demo:Tag", "plain:Plain")
    text = text.replace("tag.add", "tag.go")
    assert any("decorate it with @rpc" in p for p in problems_of(write(tmp_path, text)))


def test_env_reference_without_value_is_an_error(tmp_path, monkeypatch):
    monkeypatch.delenv("SG_TEST_UNSET", raising=False)
    text = GOOD.replace("    replicas: 2\n", "    replicas: 2\n    config: {key: '${SG_TEST_UNSET}'}\n")
    problems = problems_of(write(tmp_path, text))
    assert any("${SG_TEST_UNSET}" in p and "not set" in p for p in problems)
    monkeypatch.setenv("SG_TEST_UNSET", "s3cret")
    graph, _ = load_checked(write(tmp_path, text))
    assert graph.functions["tag"].config == {"key": "s3cret"}


def test_check_cli_exit_codes(tmp_path):
    ok = scaigrid("graph", "check", str(write(tmp_path, GOOD)))
    assert ok.returncode == 0 and "ok (3 functions, 1 routes)" in ok.stdout
    bad = scaigrid("graph", "check", str(write(tmp_path, GOOD.replace("- gate.check", "- nope.check"))))
    assert bad.returncode == 2
    assert "graph.yaml:16: step 'nope.check': unknown function 'nope'" in bad.stderr
    missing = scaigrid("graph", "check", str(tmp_path / "absent.yaml"))
    assert missing.returncode == 2 and "cannot read graph file" in missing.stderr


def test_invalid_yaml_names_its_line(tmp_path):
    path = write(tmp_path, GOOD.replace("  tag:\n", "  tag: [\n"))
    with pytest.raises(GraphError) as info:
        load_graph(path)
    assert info.value.problems[0].startswith(f"{path}:")
    assert "not valid YAML" in info.value.problems[0]


def test_show_text_and_mermaid(tmp_path):
    path = write(tmp_path, GOOD)
    text = scaigrid("graph", "show", str(path))
    assert text.returncode == 0
    assert "pipeline  [POST /pipeline]" in text.stdout and "2. tag.add  (remote)  timeout=2s" in text.stdout
    mermaid = scaigrid("graph", "show", "--mermaid", str(path))
    assert mermaid.stdout.startswith("flowchart LR")
    assert "route_pipeline -->|1. check| gate" in mermaid.stdout and "gate -->|2. add| tag" in mermaid.stdout


def test_product_graph_is_valid():
    result = scaigrid("graph", "check", str(REPO / "graph.yaml"))
    assert result.returncode == 0, result.stderr


def test_published_json_schema_is_current_and_validates_shape():
    published = json.loads((REPO / "runtime" / "graph.schema.json").read_text())
    assert published == json_schema(), "regenerate: scaigrid graph schema > runtime/graph.schema.json"
    assert set(published["properties"]) >= {"functions", "routes", "path", "version"}
    assert "placement" in published["$defs"]["FunctionSpec"]["properties"]
