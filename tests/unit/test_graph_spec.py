"""graph.yaml's loader and checker at their edges, called directly (runtime/graph.py, runtime/graph_check.py):
body sizes, ${VAR:-default}, names and endpoints, files that are no graph, timeouts, and the code checks that
tests/test_graph_file.py does not make (chunk steps, `calls`, entries that are no class)."""
import textwrap
from pathlib import Path

import pytest

from scaigrid.runtime.graph import GraphError, load_graph
from scaigrid.runtime.graph_check import check_graph, is_ingress, is_rpc
from scaigrid.functions.auth.service import Auth
from scaigrid.functions.gateway.service import Gateway

BASE = """\
version: 1
functions:
  gateway:
    entry: scaigrid.functions.gateway.service:Gateway
  auth:
    entry: scaigrid.functions.auth.service:Auth
    timeout: 5
routes:
  me:
    http: GET /me
    steps: [auth.authenticate, {step: auth.authenticate, timeout: 2}]
"""


@pytest.fixture
def graph_file(tmp_path):
    def write(text: str = BASE) -> Path:
        path = tmp_path / "graph.yaml"
        path.write_text(textwrap.dedent(text))
        return path
    return write


def problems(path: Path, check: bool = False) -> list[str]:
    with pytest.raises(GraphError) as info:
        check_graph(load_graph(path)) if check else load_graph(path)
    return info.value.problems


def with_route_field(field: str) -> str:
    return BASE + f"    {field}\n"


@pytest.mark.parametrize("value, size", [("8MiB", 8 * 2**20), ("1.5 KiB", 1536), ("512", 512), (100, 100),
                                         ("2GiB", 2 * 2**30)])
def test_max_body_sizes(graph_file, value, size):
    graph = load_graph(graph_file(with_route_field(f"max_body: {value!r}" if isinstance(value, str)
                                                   else f"max_body: {value}")))
    assert graph.routes["me"].max_body == size


@pytest.mark.parametrize("value, needle", [("'8 MB'", "is not a size"), ("'-1'", "is not a size"),
                                           ("0", "greater than 0"), ("'KiB'", "is not a size")])
def test_bad_max_body_names_its_line(graph_file, value, needle):
    path = graph_file(with_route_field(f"max_body: {value}"))
    [problem] = problems(path)
    assert problem.startswith(f"{path}:12: routes.me.max_body:") and needle in problem


def test_env_defaults_and_values_in_nested_config(graph_file, monkeypatch):
    monkeypatch.delenv("SG_UNIT_UNSET", raising=False)
    monkeypatch.setenv("SG_UNIT_SET", "from-env")
    text = BASE.replace("    timeout: 5\n", "    timeout: 5\n    config:\n"
                        "      a: ${SG_UNIT_UNSET:-fallback}\n      b: ['x-${SG_UNIT_SET}-y', 3]\n"
                        "      c: {d: '${SG_UNIT_SET:-unused}'}\n      e: ${SG_UNIT_UNSET:-}\n")
    config = load_graph(graph_file(text)).functions["auth"].config
    assert config == {"a": "fallback", "b": ["x-from-env-y", 3], "c": {"d": "from-env"}, "e": ""}


@pytest.mark.parametrize("text, needle", [
    ("", "graph must be a mapping"),
    ("- a\n- b\n", "graph must be a mapping"),
    ("version: 2\nfunctions: {g: {entry: 'a:B'}}\n", "use one of the allowed values"),
    ("functions: {}\n", "give at least one item"),
    ("functions: {Bad-Name: {entry: 'a:B'}}\n", "lower_snake_case"),
    ("functions: {g: {entry: 'a:B', replica: 2}}\n", "remove it or check its spelling"),
    ("functions: {g: {entry: 'a:B', calls: [nostep]}}\n", "'nostep' is not 'function.method'"),
    ("functions: {g: {entry: 'a:B', pool: 0}}\n", "functions.g.pool"),
])
def test_files_that_are_no_valid_graph(graph_file, text, needle):
    found = problems(graph_file(text))
    assert any(needle in p for p in found), found


@pytest.mark.parametrize("endpoint, ok", [("GET /me", True), ("GET,POST /me", True), ("PATCH /a/<id>/b", True),
                                          ("get /me", False), ("GET me", False), ("GET /a b", False),
                                          ("HEAD /me", False), ("GET, POST /me", False)])
def test_endpoints_are_method_and_path(graph_file, endpoint, ok):
    path = graph_file(BASE.replace("GET /me", endpoint))
    if ok:
        assert load_graph(path).routes["me"].http == [endpoint]
    else:
        assert any("is not 'METHOD /path'" in p for p in problems(path))


def test_timeouts_of_steps_and_routes(graph_file):
    graph = load_graph(graph_file())
    first, second = graph.routes["me"].step_specs()
    assert (graph.timeout_of(first), graph.timeout_of(second)) == (5, 2)
    assert graph.route_timeout("me") == 7


def test_every_problem_is_reported_at_once(graph_file):
    text = BASE.replace("timeout: 5", "timeout: -1").replace("GET /me", "FETCH me")
    found = problems(graph_file(text))
    assert len(found) == 2 and all(";" in p for p in found)


def test_line_falls_back_to_the_deepest_known_node(graph_file):
    graph = load_graph(graph_file())
    assert graph.line("routes", "me", "steps", 1) == 11
    assert graph.line("routes", "me", "steps", 1, "nothing", "here") == 11
    assert graph.line("nowhere") == 1


def test_a_chunk_step_must_run_inline(graph_file):
    path = graph_file(with_route_field("chunks: [auth.authenticate]"))
    found = problems(path, check=True)
    assert any(p.startswith(f"{path.resolve()}:12:") and "must be placement: inline" in p for p in found), found
    check_graph(load_graph(graph_file(with_route_field("chunks: [auth.authenticate]")
                                      .replace("    timeout: 5\n", "    timeout: 5\n    placement: inline\n"))))


def test_calls_to_unknown_functions_and_non_classes(graph_file):
    text = BASE.replace("    timeout: 5\n", "    timeout: 5\n    calls: [ghost.run]\n").replace(
        "routes:\n", "  helper:\n    entry: scaigrid.runtime.graph:load_graph\nroutes:\n")
    found = problems(graph_file(text), check=True)
    assert any(":8: step 'ghost.run': unknown function 'ghost'" in p for p in found), found
    assert any(":10: 'scaigrid.runtime.graph:load_graph' is not a class" in p for p in found), found


def test_what_makes_an_ingress_and_an_rpc_step():
    assert is_ingress(Gateway) and not is_ingress(Auth)
    assert is_rpc(Auth, "authenticate") and not is_rpc(Auth, "identity") and not is_rpc(Auth, "nothing")
