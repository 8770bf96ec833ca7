"""The Grafana dashboard of `scaigrid deploy dashboard`: every query parses and means what its title says
(Prometheus' own promtool) and answers from a running graph (a throwaway Prometheus server scraping it), names only
metrics the code defines, has one row per function of the graph it was generated from, and has the JSON shape
Grafana imports.

There is no Grafana here: the shape is checked against what Grafana's dashboard model needs.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from itertools import combinations
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import REGISTRY

from scaigrid.runtime.deploy.dashboard import panel_id
from scaigrid.runtime.deploy.topology import after_queue
from scaigrid.runtime.graph_check import is_ingress, load_checked
from scaigrid.runtime.service import after_methods
from scaigrid.runtime.testing import SCAIGRID, free_port

ROOT = Path(__file__).resolve().parent.parent
PRODUCT_GRAPH = ROOT / "graph.yaml"
MIXED = ROOT / "tests" / "graphs" / "mixed.yaml"  # demo functions: another function set, after-steps, inline-only

# Every metric the dashboard reads, as exposed (a histogram by its name, a counter with _total).
EXPECTED = {
    "scaigrid_function_seconds", "scaigrid_in_flight", "scaigrid_worker_capacity", "scaigrid_queue_depth",
    "scaigrid_request_seconds", "scaigrid_step_seconds", "scaigrid_step_errors_total",
    "scaigrid_after_queue_depth", "scaigrid_after_oldest_age_seconds", "scaigrid_dead_letters",
    "scaigrid_ttft_seconds", "scaigrid_output_tokens_per_second", "scaigrid_generations_in_flight",
    "scaigrid_tokens_total", "scaigrid_spend_micros_total", "scaigrid_usage_records_total",
    "scaigrid_build_info", "scaigrid_store_up",
}
# What the queries use of Grafana's own variables, as promtool reads them
GRAFANA_VARIABLES = {"__rate_interval": "5m", "__range": "1h"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",), "info": ("_info",),
            "summary": ("", "_count", "_sum")}


def generate(graph: Path, out: Path) -> dict:
    result = subprocess.run([*SCAIGRID, "deploy", "dashboard", "--graph", str(graph), "-o", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def dashboards(tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("dashboards")
    return {"product": generate(PRODUCT_GRAPH, out / "product.json"), "mixed": generate(MIXED, out / "mixed.json")}


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        reason = "promtool not found: apt-get install prometheus (./dev.sh test does, as root)"
        if os.environ.get("CI") in ("true", "1"):
            pytest.fail(reason)
        pytest.skip(reason)
    return found


def panels(board: dict) -> list[dict]:
    return [p for p in board["panels"] if p["type"] != "row"]


def queries(board: dict) -> dict[str, str]:
    """Every PromQL of the dashboard by where it is: panel targets, and the selectors of label_values variables."""
    found = {f"panel_{p['id']}:{t['refId']}": t["expr"] for p in panels(board) for t in p["targets"]}
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            selector = re.fullmatch(r"label_values\((.+), *\w+\)", var["query"]["query"])
            assert selector, f"variable {var['name']}: {var['query']['query']} is not label_values(selector, label)"
            found[f"variable_{var['name']}"] = selector.group(1)
    return found


def as_prometheus_reads(expr: str, board: dict, window: str = "") -> str:
    """A query with its variables put in as Grafana does: intervals for Grafana's (all of them `window` if given),
    'all' for the dashboard's."""
    values = {**GRAFANA_VARIABLES, **{v["name"]: v.get("allValue") or ".*" for v in board["templating"]["list"]}}
    values.update(dict.fromkeys(GRAFANA_VARIABLES, window) if window else {})
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), expr)


def promtool_problems(promtool: str, exprs: dict[str, str], folder: Path) -> str:
    """promtool's complaints about the expressions (each a recording rule named for where it is), or ''."""
    rules = [{"record": f"dashboard:{where}", "expr": expr} for where, expr in exprs.items()]
    file = folder / "dashboard-rules.yaml"
    file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(file)], capture_output=True, text=True, timeout=60)
    return "" if result.returncode == 0 else result.stdout + result.stderr


# --- (a) every query parses, and means what its panel says -------------------------------------------------------

@pytest.mark.parametrize("name", ["product", "mixed"])
def test_every_query_parses_in_prometheus(dashboards, promtool, tmp_path, name):
    board = dashboards[name]
    exprs = {where: as_prometheus_reads(e, board) for where, e in queries(board).items()}
    unset = {where: e for where, e in exprs.items() if "$" in e}
    assert not unset, f"variables the dashboard does not define: {unset}"
    assert len(exprs) > 40
    assert promtool_problems(promtool, exprs, tmp_path) == ""


def test_the_parse_check_catches_a_broken_query(promtool, tmp_path):
    problems = promtool_problems(promtool, {"ok": "sum(up)", "broken": "sum(rate(up[5m])"}, tmp_path)
    assert "dashboard:broken" in problems and "dashboard:ok" not in problems


def query_of(board: dict, key: str, ref: str = "A") -> str:
    panel = next(p for p in panels(board) if p["id"] == panel_id(key))
    return as_prometheus_reads(next(t["expr"] for t in panel["targets"] if t["refId"] == ref), board)


def test_queries_compute_what_their_panels_say(dashboards, promtool, tmp_path):
    """Synthetic series through Prometheus' engine: rag's calls, errors, p95 and saturation; spend per hour."""
    board = dashboards["product"]
    rag = 'function="rag", method="search"'
    series = {  # one sample a minute
        f'scaigrid_function_seconds_count{{{rag}, outcome="ok"}}': "0+54x20",
        f'scaigrid_function_seconds_count{{{rag}, outcome="error"}}': "0+6x20",  # 0.1/s of 1/s
        f'scaigrid_function_seconds_bucket{{{rag}, outcome="ok", le="0.1"}}': "0+60x20",
        f'scaigrid_function_seconds_bucket{{{rag}, outcome="ok", le="+Inf"}}': "0+60x20",
        'scaigrid_in_flight{function="rag", pid="1"}': "3x20", 'scaigrid_in_flight{function="rag", pid="2"}': "2x20",
        'scaigrid_worker_capacity{function="rag", pid="1"}': "20x20",
        'scaigrid_worker_capacity{function="rag", pid="2"}': "20x20",
        'scaigrid_in_flight{function="ingest", pid="3"}': "4x20",  # another function: not in rag's saturation
        'scaigrid_spend_micros_total{model="m1"}': "0+500000x20",  # 0.5 a minute: 30 an hour
    }
    expect = [("fn.rag.rate", "A", '{method="search"}', 1), ("fn.rag.errors", "A", '{method="search"}', 0.1),
              ("fn.rag.latency", "B", "{}", 0.095),  # p95 inside the first bucket [0, 0.1]
              ("fn.rag.saturation", "A", "{}", 0.125), ("money.spend", "A", '{model="m1"}', 30)]
    tests = [{"expr": f"round({query_of(board, key, ref)}, 0.0001)", "eval_time": "10m",
              "exp_samples": [{"labels": labels, "value": value}]} for key, ref, labels, value in expect]
    file = tmp_path / "dashboard-test.yaml"
    file.write_text(yaml.safe_dump({"evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": [{"series": s, "values": v} for s, v in series.items()],
        "promql_expr_test": tests}]}))
    result = subprocess.run([promtool, "test", "rules", str(file)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- (b) every metric is one the code defines ------------------------------------------------------------------

def exposed_by_code() -> dict[str, set[str]]:
    """Metric names the code defines (the product graph's functions imported), by family: what /metrics shows."""
    load_checked(PRODUCT_GRAPH)
    return {f.name: {f.name + s for s in SUFFIXES[f.type]} for f in REGISTRY.collect()}


def family(name: str) -> str:
    return re.sub(r"(_bucket|_count|_sum)$", "", name)


@pytest.mark.parametrize("name", ["product", "mixed"])
def test_every_metric_is_defined_by_the_code(dashboards, name):
    used = {n for e in queries(dashboards[name]).values() for n in re.findall(r"\bscaigrid_\w+", e)}
    assert {family(n) for n in used} == EXPECTED
    families = exposed_by_code()
    exposed = set().union(*families.values())
    unknown = {n for n in used if n not in exposed}
    assert not unknown, f"queries read metrics the code does not define: {sorted(unknown)}"


@pytest.fixture
def prometheus(mixed_graph, promtool, tmp_path):
    """A throwaway Prometheus server scraping the running mixed graph every second; its URL."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus not found beside promtool: apt-get install prometheus"
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s"}, "scrape_configs": [
        {"job_name": "scaigrid", "static_configs": [{"targets": [mixed_graph.base_url.removeprefix("http://")]}]}]}))
    with open(tmp_path / "prometheus.log", "w") as log:
        proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not ready(url):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def instant(url: str, expr: str) -> list[dict]:
    answer = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", (expr, answer)
    return answer["data"]["result"]


def labels_read(expr: str) -> set[str]:
    """The label names a query matches on or groups by (`le` is the histogram's own)."""
    grouped = {n.strip() for by in re.findall(r"\bby \(([^)]*)\)", expr) for n in by.split(",")}
    return (grouped | set(re.findall(r"(\w+)=~?\"", expr))) - {"le", ""}


def test_queries_answer_from_a_running_graph(dashboards, mixed_graph, prometheus):
    """Prometheus scrapes a running graph that served a call of each function and a step timeout: every query over
    metrics it exports answers with series, and reads only labels they have (grouping by a missing one answers
    too)."""
    assert httpx.post(mixed_graph.base_url + "/pipeline", json={"text": "hi"}, timeout=30).status_code == 200
    assert httpx.post(mixed_graph.base_url + "/slow", json={"seconds": 3}, timeout=30).status_code == 504
    # every function of the graph gets a call (a query of one that had none answers nothing, rightly)
    assert httpx.post(mixed_graph.base_url + "/slow-inline", json={"seconds": 0}, timeout=30).status_code == 200
    with httpx.stream("POST", mixed_graph.base_url + "/stream", json={"stream": True, "n": 3}, timeout=30) as r:
        assert r.status_code == 200 and "[DONE]" in r.read().decode()
    deadline = time.monotonic() + 60
    while not instant(prometheus, 'count_over_time(scaigrid_request_seconds_count{route="slow"}[1m]) >= 3'):
        assert time.monotonic() < deadline, "Prometheus did not scrape the graph three times in 60 s"
        time.sleep(0.5)
    exported: dict[str, set[str]] = {}
    for series in instant(prometheus, '{__name__=~"scaigrid_.+"}'):
        exported.setdefault(series["metric"].pop("__name__"), set()).update(series["metric"])
    board, checked = dashboards["mixed"], set()
    for where, expr in queries(board).items():
        read = set(re.findall(r"\bscaigrid_\w+", expr))
        if read <= exported.keys():  # the others' series come with traffic this graph has not got (models, money)
            query = as_prometheus_reads(expr, board, window="1m")
            assert instant(prometheus, query), f"{where}: {query} answers nothing"
            missing = labels_read(expr) - set().union(*(exported[n] for n in read))
            assert not missing, f"{where}: {expr} reads {missing}, which {', '.join(read)} do not have"
            checked |= {family(n) for n in read}
    assert checked >= {"scaigrid_request_seconds", "scaigrid_step_seconds", "scaigrid_step_errors_total"}


# --- (c) one row per function of the graph -----------------------------------------------------------------------

def function_rows(board: dict) -> list[str]:
    return [r["title"].split(" (", 1)[0] for r in board["panels"] if r["type"] == "row" and r["title"].endswith("s)")
            and ", timeout" in r["title"]]


@pytest.mark.parametrize("name, graph", [("product", PRODUCT_GRAPH), ("mixed", MIXED)])
def test_one_row_per_function_in_graph_order(dashboards, name, graph):
    board = dashboards[name]
    loaded, classes = load_checked(graph)
    assert function_rows(board) == list(loaded.functions)
    for function, spec in loaded.functions.items():
        rate = next(p for p in panels(board) if p["id"] == panel_id(f"fn.{function}.rate"))
        # an ingress's calls are its HTTP requests (scaigrid_request_seconds); every other's, its RPC and events
        assert (rate["targets"][0]["expr"].startswith("sum by (status) (rate(scaigrid_request_seconds_count")
                if is_ingress(classes[function]) else f'function="{function}"' in rate["targets"][0]["expr"])
        ids = {p["id"] for p in panels(board)}
        # saturation needs workers of its own; an inline-only function's run in its callers'
        assert (panel_id(f"fn.{function}.saturation") in ids) == (spec.replicas > 0)
        after = [after_queue(function, m) for m in after_methods(loaded, function)]
        if after:
            ages = next(p for p in panels(board) if p["id"] == panel_id(f"fn.{function}.after_age"))
            assert [t["legendFormat"] for t in ages["targets"]] == after
    route = next(v for v in board["templating"]["list"] if v["name"] == "route")
    assert route["query"].split(",") == list(loaded.routes)


def test_the_two_graphs_give_different_rows(dashboards):
    product, mixed = (function_rows(dashboards[n]) for n in ("product", "mixed"))
    assert "rag" in product and "rag" not in mixed and "tag_remote" in mixed and "tag_remote" not in product


# --- (d) the shape Grafana imports ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["product", "mixed"])
def test_grafana_shape(dashboards, name):
    board = dashboards[name]
    assert board["schemaVersion"] >= 36 and board["uid"] and board["title"]
    datasource = next(v for v in board["templating"]["list"] if v["name"] == "datasource")
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) and 0 < i < 2**31 for i in ids)
    boxes = [p["gridPos"] for p in board["panels"]]
    for box in boxes:
        assert box["x"] >= 0 and box["w"] > 0 and box["x"] + box["w"] <= 24 and box["h"] > 0 and box["y"] >= 0
    for a, b in combinations(boxes, 2):
        overlap = (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
                   and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])
        assert not overlap, (a, b)
    for panel in panels(board):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs))
        assert all(t["datasource"] == panel["datasource"] for t in panel["targets"])
    # every panel sits below a row: Grafana folds a row with the panels under it
    assert board["panels"][0]["type"] == "row"


def row_panels(board: dict, title_start: str) -> dict[str, int]:
    """The panels under the first row whose title starts so, by title: their ids."""
    found, inside = {}, False
    for panel in board["panels"]:
        if panel["type"] == "row":
            if inside:
                break
            inside = panel["title"].startswith(title_start)
        elif inside:
            found[panel["title"]] = panel["id"]
    return found


def test_ids_stay_when_the_graph_changes(dashboards):
    """The models row sits elsewhere in another graph's dashboard; its panels keep their ids (links survive)."""
    product, mixed = (dashboards[n] for n in ("product", "mixed"))
    rows_y = [next(r["gridPos"]["y"] for r in b["panels"] if r["title"] == "Models") for b in (product, mixed)]
    assert rows_y[0] != rows_y[1]
    assert row_panels(product, "Models") == row_panels(mixed, "Models") != {}


def test_a_missing_graph_is_one_line_naming_it(tmp_path):
    missing = tmp_path / "nope.yaml"
    result = subprocess.run([*SCAIGRID, "deploy", "dashboard", "--graph", str(missing)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [f"scaigrid: {missing}: cannot read graph file (No such file or directory); "
                                          "pass an existing graph.yaml"]
