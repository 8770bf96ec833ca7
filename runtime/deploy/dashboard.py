"""A Grafana dashboard generated from graph.yaml: an overview, the routes of each ingress, one row per function
(rate, errors, latency, saturation, queues) and rows for the metrics the functions' own code exports.

The panels of a function row come from the graph (its placement, replicas and queues); the queries name only the
metrics the code defines (`tests/test_dashboard.py` checks both, and parses every query with Prometheus itself).
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field

from ..service import after_methods
from .topology import Topology, after_queue, rpc_queue

SCHEMA_VERSION = 39  # Grafana 10.4 / 11.x
WIDTH = 24  # Grafana's grid is 24 columns wide
PANEL_HEIGHT = 8
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
WINDOW = "$__rate_interval"  # Grafana picks it from the scrape interval and the zoom
QUANTILES = (0.5, 0.95, 0.99)


@dataclass(frozen=True)
class Panel:
    """One graph (or stat) of a row; `key` is unique in the dashboard and keeps the panel's id across graph edits."""

    key: str
    title: str
    targets: tuple[tuple[str, str], ...]  # (PromQL, legend)
    unit: str = "short"
    width: int = 6
    kind: str = "timeseries"  # or "stat"
    description: str = ""
    mappings: tuple[dict, ...] = ()


@dataclass(frozen=True)
class Row:
    key: str
    title: str
    panels: tuple[Panel, ...] = field(default_factory=tuple)


# --- PromQL ------------------------------------------------------------------------------------------------------

def _series(metric: str, **labels: str) -> str:
    """A series selector; a label value starting with '~' is a regex match (`model=~"$model"`)."""
    matchers = ", ".join(f'{k}=~"{v[1:]}"' if v.startswith("~") else f'{k}="{v}"' for k, v in labels.items())
    return f"{metric}{{{matchers}}}" if matchers else metric


def _by(by: tuple[str, ...]) -> str:
    return f" by ({', '.join(by)}) " if by else ""


def gauge(metric: str, how: str = "sum", by: tuple[str, ...] = (), **labels: str) -> str:
    """A gauge's series aggregated (`how`: sum, max, min, count) by `by`."""
    return f"{how}{_by(by)}({_series(metric, **labels)})"


def _over(function: str, window: str, metric: str, by: tuple[str, ...], labels: dict[str, str]) -> str:
    return f"sum{_by(by)}({function}({_series(metric, **labels)}[{window}]))"


def rate(metric: str, by: tuple[str, ...] = (), **labels: str) -> str:
    """Per-second rate of a counter (or a histogram's `_count`), summed by `by`."""
    return _over("rate", WINDOW, metric, by, labels)


def failures(metric: str, by: tuple[str, ...], failed: dict[str, str], **labels: str) -> str:
    """The rate of the calls matching `failed`, and 0 (not "no data") for each `by` group that has calls but none
    of them failed: a quiet error panel reads as no errors."""
    return f"{rate(metric, by, **labels, **failed)} or ({rate(metric, by, **labels)} * 0)"


def increase(metric: str, by: tuple[str, ...] = (), **labels: str) -> str:
    """What a counter grew by over the dashboard's time range, summed by `by`."""
    return _over("increase", "$__range", metric, by, labels)


def quantile(q: float, histogram: str, by: tuple[str, ...] = (), **labels: str) -> str:
    """The q-quantile of a histogram over the rate window, per `by`."""
    return f"histogram_quantile({q}, {rate(histogram + '_bucket', ('le', *by), **labels)})"


def latency(histogram: str, **labels: str) -> tuple[tuple[str, str], ...]:
    """p50, p95 and p99 of a histogram, one target each."""
    return tuple((quantile(q, histogram, **labels), f"p{round(q * 100)}") for q in QUANTILES)


# --- rows from the graph -------------------------------------------------------------------------------------------

UP_DOWN = ({"type": "value", "options": {"0": {"text": "down", "color": "red", "index": 0},
                                         "1": {"text": "up", "color": "green", "index": 1}}},)


def overview_row(topology: Topology) -> Row:
    """What a glance needs: the version running, the stores, requests and errors at the door, dead letters."""
    graph = topology.graph
    return Row("overview", f"Overview ({len(graph.functions)} functions, {len(graph.routes)} routes)", (
        Panel("build", "Version", ((gauge("scaigrid_build_info", "count", ("version", "python")),
                                    "{{version}} (python {{python}})"),),
              kind="stat", description="scaigrid_build_info: processes per version"),
        Panel("stores", "Stores", ((gauge("scaigrid_store_up", "min", ("store",)), "{{store}}"),), kind="stat",
              mappings=UP_DOWN, description="0 as soon as any process cannot reach the store"),
        Panel("requests", "Requests", ((rate("scaigrid_request_seconds_count"), "all"),
                                       (rate("scaigrid_request_seconds_count", status="~5.."), "5xx")), unit="reqps"),
        Panel("dead_letters", "Dead letters", ((gauge("scaigrid_dead_letters", "max", ("queue",)), "{{queue}}"),),
              kind="stat",
              description="after-step messages that failed for good: `scaigrid ledger dead-letters`, then replay"),
    ))


def routes_row(topology: Topology, ingress: str) -> Row:
    """The routes an ingress function serves: requests, statuses, latency, and their steps."""
    route = "~$route"
    return Row(f"routes.{ingress}", f"{ingress}: routes", (
        Panel(f"routes.{ingress}.rate", "Requests by route",
              ((rate("scaigrid_request_seconds_count", ("route",), route=route), "{{route}}"),), unit="reqps"),
        Panel(f"routes.{ingress}.status", "Responses by status",
              ((rate("scaigrid_request_seconds_count", ("status",), route=route), "{{status}}"),), unit="reqps"),
        Panel(f"routes.{ingress}.latency", "Request latency",
              latency("scaigrid_request_seconds", route=route), unit="s"),
        Panel(f"routes.{ingress}.p95_by_route", "Request p95 by route",
              ((quantile(0.95, "scaigrid_request_seconds", ("route",), route=route), "{{route}}"),), unit="s"),
        Panel(f"routes.{ingress}.steps", "Step p95 (as the route sees it)",
              ((quantile(0.95, "scaigrid_step_seconds", ("step", "placement"), route=route),
                "{{step}} ({{placement}})"),), unit="s", width=12),
        Panel(f"routes.{ingress}.step_errors", "Step errors by code",
              ((rate("scaigrid_step_errors_total", ("step", "code"), route=route), "{{step}}: {{code}}"),),
              unit="ops", width=12),
    ))


def _placement(topology: Topology, name: str) -> str:
    spec = topology.graph.functions[name]
    if not spec.replicas:
        return f"{spec.placement}, no replicas, timeout {spec.timeout:g}s"
    replicas = f"{spec.replicas} replica{'s' if spec.replicas != 1 else ''}"
    return f"{spec.placement}, {replicas} x pool {spec.pool}, timeout {spec.timeout:g}s"


def function_row(topology: Topology, name: str) -> Row:
    """One function: calls by method and their errors and latency; saturation of its workers; its queues."""
    spec = topology.graph.functions[name]
    fn = {"function": name}
    unit = next((u for u in topology.units if u.name == name), None)
    if unit is not None and unit.ingress:  # its calls are HTTP requests, which scaigrid_request_seconds times
        panels = [
            Panel(f"fn.{name}.rate", "Requests by status",
                  ((rate("scaigrid_request_seconds_count", ("status",)), "{{status}}"),), unit="reqps"),
            Panel(f"fn.{name}.errors", "Errors (5xx)",
                  ((failures("scaigrid_request_seconds_count", (), {"status": "~5.."}), "5xx"),), unit="reqps"),
            Panel(f"fn.{name}.latency", "Latency", latency("scaigrid_request_seconds"), unit="s"),
        ]
    else:
        panels = [
            Panel(f"fn.{name}.rate", "Calls by method",
                  ((rate("scaigrid_function_seconds_count", ("method",), **fn), "{{method}}"),), unit="ops"),
            Panel(f"fn.{name}.errors", "Errors by method",
                  ((failures("scaigrid_function_seconds_count", ("method",), {"outcome": "error"}, **fn),
                    "{{method}}"),),
                  unit="ops"),
            Panel(f"fn.{name}.latency", "Latency", latency("scaigrid_function_seconds", **fn), unit="s"),
        ]
    if spec.replicas:
        panels.append(Panel(f"fn.{name}.saturation", "Saturation (workers busy)",
                            ((f"{gauge('scaigrid_in_flight', **fn)} / {gauge('scaigrid_worker_capacity', **fn)}",
                              "in flight / capacity"),), unit="percentunit",
                            description=f"{spec.replicas} replica(s) x pool {spec.pool}"))
    else:  # inline only: it runs in its callers' workers, which have the capacity
        panels.append(Panel(f"fn.{name}.in_flight", "In flight (in its callers' workers)",
                            ((gauge("scaigrid_in_flight", **fn), "in flight"),)))
    queues: list[tuple[str, str]] = []
    if unit and rpc_queue(name) in unit.queues:
        queues.append((gauge("scaigrid_queue_depth", **fn), rpc_queue(name)))
    after = [after_queue(name, m) for m in after_methods(topology.graph, name)]
    queues += [(gauge("scaigrid_after_queue_depth", "max", queue=q), q) for q in after]
    if queues:
        panels.append(Panel(f"fn.{name}.queues", "Queue depth", tuple(queues), width=12 if after else 24))
    if after:
        panels.append(Panel(f"fn.{name}.after_age", "Oldest unprocessed after-step", tuple(
            (gauge("scaigrid_after_oldest_age_seconds", "max", queue=q), q) for q in after), unit="s", width=12))
    return Row(f"fn.{name}", f"{name} ({_placement(topology, name)})", tuple(panels))


# --- rows of the functions' own metrics: to the engine, names and titles with no logic of their own ----------

MODEL = "~$model"
METRIC_ROWS = (
    Row("models", "Models", (
        Panel("models.ttft", "Time to first token p50 / p95", tuple(
            (quantile(q, "scaigrid_ttft_seconds", ("model",), model=MODEL), f"{{{{model}}}} p{round(q * 100)}")
            for q in (0.5, 0.95)), unit="s", width=8),
        Panel("models.tokens_per_second", "Output tokens/s per generation (p50)",
              ((quantile(0.5, "scaigrid_output_tokens_per_second", ("model",), model=MODEL), "{{model}}"),), width=8),
        Panel("models.in_flight", "Generations in flight",
              ((gauge("scaigrid_generations_in_flight", by=("model",), model=MODEL), "{{model}}"),), width=8),
    )),
    Row("money", "Tokens and spend", (
        Panel("money.tokens", "Tokens/s by model and kind",
              ((rate("scaigrid_tokens_total", ("model", "kind"), model=MODEL), "{{model}} {{kind}}"),), width=8),
        Panel("money.spend", "Spend per hour by model",
              ((rate("scaigrid_spend_micros_total", ("model",), model=MODEL) + " * 3600 / 1e6", "{{model}}"),),
              width=8, description="scaigrid_spend_micros_total is in micro-units of the price list's currency"),
        Panel("money.records", "Usage records/s by model",
              ((rate("scaigrid_usage_records_total", ("model",), model=MODEL), "{{model}}"),), unit="ops", width=8),
        Panel("money.tokens_range", "Tokens in the time range", (
            (increase("scaigrid_tokens_total", ("model", "kind"), model=MODEL), "{{model}} {{kind}}"),),
              kind="stat", width=12),
        Panel("money.spend_range", "Spend in the time range", (
            (increase("scaigrid_spend_micros_total", ("model",), model=MODEL) + " / 1e6", "{{model}}"),),
              kind="stat", width=12),
    )),
)


def rows(topology: Topology) -> list[Row]:
    """Every row, top to bottom: overview, each ingress's routes, each function in graph order, the metric rows."""
    ingresses = [u.name for u in topology.units if u.ingress]
    return [overview_row(topology), *(routes_row(topology, i) for i in ingresses),
            *(function_row(topology, name) for name in topology.graph.functions), *METRIC_ROWS]


# --- Grafana JSON --------------------------------------------------------------------------------------------------

def panel_id(key: str) -> int:
    """A panel's id from its key: the same panel keeps its id (and its links) when other rows come or go."""
    return zlib.crc32(key.encode()) & 0x7FFFFFFF or 1


def _panel_json(panel: Panel, x: int, y: int) -> dict:
    defaults: dict = {"unit": panel.unit, "mappings": list(panel.mappings)}
    if panel.unit == "percentunit":
        defaults.update(min=0, max=1)
    options = ({"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "textMode": "value_and_name", "colorMode": "value", "graphMode": "none"}
               if panel.kind == "stat" else
               {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                "tooltip": {"mode": "multi", "sort": "desc"}})
    return {
        "id": panel_id(panel.key), "type": panel.kind, "title": panel.title, "description": panel.description,
        "datasource": DATASOURCE, "gridPos": {"h": PANEL_HEIGHT, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []}, "options": options,
        "targets": [{"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend,
                     "range": True} for i, (expr, legend) in enumerate(panel.targets)],
    }


def layout(all_rows: list[Row]) -> list[dict]:
    """Rows top to bottom, each a row header and its panels left to right, wrapping at the grid's width."""
    out, y = [], 0
    for row in all_rows:
        out.append({"id": panel_id(row.key), "type": "row", "title": row.title, "collapsed": False, "panels": [],
                    "gridPos": {"h": 1, "w": WIDTH, "x": 0, "y": y}})
        y, x = y + 1, 0
        for panel in row.panels:
            if x + panel.width > WIDTH:
                y, x = y + PANEL_HEIGHT, 0
            out.append(_panel_json(panel, x, y))
            x += panel.width
        y += PANEL_HEIGHT if row.panels else 0
    return out


def _variables(topology: Topology) -> list[dict]:
    query = 'label_values({__name__=~"scaigrid_tokens_total|scaigrid_generations_in_flight"}, model)'
    return [
        {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus", "current": {},
         "hide": 0, "refresh": 1, "regex": "", "options": []},
        # the routes are the graph's own: listed whether or not they have had traffic yet
        {"name": "route", "label": "Route", "type": "custom", "query": ",".join(topology.graph.routes),
         "includeAll": True, "multi": True, "allValue": ".*", "current": {"text": "All", "value": "$__all"},
         "hide": 0, "options": [{"text": "All", "value": "$__all", "selected": True}] + [
             {"text": r, "value": r, "selected": False} for r in topology.graph.routes]},
        {"name": "model", "label": "Model", "type": "query", "datasource": DATASOURCE, "definition": query,
         "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
         "includeAll": True, "multi": True, "allValue": ".*", "current": {"text": "All", "value": "$__all"},
         "refresh": 2, "sort": 1, "regex": "", "hide": 0, "options": []},
    ]


def dashboard(topology: Topology) -> dict:
    """The Grafana dashboard (JSON model, schemaVersion 39) of a deployment's graph."""
    return {
        "uid": "scaigrid", "title": "ScaiGrid", "tags": ["scaigrid"], "editable": True, "graphTooltip": 1,
        "description": f"Generated by `scaigrid deploy dashboard` from graph.yaml (sha256 {topology.graph_digest}); "
                       f"change the graph and generate again",
        "schemaVersion": SCHEMA_VERSION, "version": 1, "refresh": "30s", "timezone": "browser",
        "time": {"from": "now-1h", "to": "now"}, "links": [],
        "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                  "enable": True, "hide": True, "name": "Annotations & Alerts", "type": "dashboard",
                                  "iconColor": "rgba(0, 211, 255, 1)"}]},
        "templating": {"list": _variables(topology)},
        "panels": layout(rows(topology)),
    }


def dashboard_json(topology: Topology) -> str:
    """The dashboard as the file Grafana imports."""
    return json.dumps(dashboard(topology), indent=2) + "\n"
