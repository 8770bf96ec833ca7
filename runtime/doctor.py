"""`scaigrid doctor`: is this deployment able to serve? One line per check (ok, warn, FAIL), each failure with what
to do, exit 1 when one failed. The runtime checks the graph and the stores its functions need; each part of the
product adds its own checks through the `scaigrid.doctor` entry point (the schema's revision, the local models,
the execution provider, the knowledge graph): a hook(settings, graph) yielding Check rows."""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from importlib.metadata import entry_points

from .graph import GraphError
from .graph_check import load_checked
from .preflight import STORES, StoreDown, check_store
from .settings import Settings, redact_url


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""

    def line(self, width: int = 16) -> str:
        mark = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}[self.status]
        fix = f" -> {self.fix}" if self.fix and self.status != "ok" else ""
        return f"{mark}  {self.name:<{width}} {self.detail}{fix}"


def _graph_and_stores(graph_file: str, settings: Settings):
    try:
        graph, classes = load_checked(graph_file)
    except GraphError as exc:
        return None, [Check("graph", "fail", "; ".join(exc.problems)[:400], "fix graph.yaml (scaigrid graph check)")]
    checks = [Check("graph", "ok", f"{graph.file}: {len(graph.functions)} functions, {len(graph.routes)} routes")]
    needed = {"rabbitmq"} | {s for name in graph.functions for s in getattr(classes[name], "stores", ())}
    for store in sorted(needed):
        attr, var = STORES[store]
        try:
            check_store(store, settings)
            checks.append(Check(store, "ok", redact_url(getattr(settings, attr))))
        except StoreDown as exc:
            checks.append(Check(store, "fail", str(exc).split("; ")[0], f"start it, or point {var} at it"))
    return graph, checks


def run_checks(graph_file: str, settings: Settings | None = None) -> list[Check]:
    settings = settings or Settings()
    graph, checks = _graph_and_stores(graph_file, settings)
    down = {c.name for c in checks if c.status == "fail"}
    for hook in entry_points(group="scaigrid.doctor"):
        try:
            checks += list(hook.load()(settings, graph, down))
        except Exception as exc:  # a broken check must not hide the others
            checks.append(Check(hook.name, "fail", f"the check itself failed: {exc!r}"[:300],
                                "report it: this is a bug"))
    return checks


def cmd_doctor(args) -> int:
    checks = run_checks(args.graph)
    width = max(len(c.name) for c in checks)
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    for check in [] if args.json else checks:
        print(check.line(width))
    failed = [c for c in checks if c.status == "fail"]
    print(f"{len(checks)} checks: {len(failed)} failed, {sum(c.status == 'warn' for c in checks)} warnings",
          file=sys.stderr)
    return 1 if failed else 0
