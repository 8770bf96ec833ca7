"""The `scaigrid` command: graph check/show/schema, up, run, doctor, ledger dead-letters/replay."""
from __future__ import annotations

import argparse
import json
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path

from .graph import GraphError, json_schema, load_graph
from .graph_check import load_checked
from .settings import EXIT_CONFIG, EXIT_STORE_DOWN, Settings, redact_url

REPO_GRAPH = Path(__file__).resolve().parent.parent / "graph.yaml"


def default_graph() -> str:
    """$SCAIGRID_GRAPH, else ./graph.yaml, else the graph.yaml that ships beside the code."""
    if os.environ.get("SCAIGRID_GRAPH"):
        return os.environ["SCAIGRID_GRAPH"]
    return "graph.yaml" if Path("graph.yaml").exists() else str(REPO_GRAPH)


def _fail(exc: Exception) -> int:
    problems = exc.problems if isinstance(exc, GraphError) else [str(exc)]
    for line in problems:
        print(f"scaigrid: {line}", file=sys.stderr)
    return EXIT_CONFIG


def cmd_graph_check(args) -> int:
    try:
        graph, _ = load_checked(args.file)
    except GraphError as exc:
        return _fail(exc)
    print(f"{graph.file}: ok ({len(graph.functions)} functions, {len(graph.routes)} routes)")
    return 0


def cmd_graph_show(args) -> int:
    from .graph_show import as_mermaid, as_text

    try:
        graph = load_graph(args.file) if args.no_import else load_checked(args.file)[0]
    except GraphError as exc:
        return _fail(exc)
    print(as_mermaid(graph) if args.mermaid else as_text(graph))
    return 0


def cmd_graph_schema(args) -> int:
    print(json.dumps(json_schema(), indent=2))
    return 0


def _launch(graph_file: str, pick) -> int:
    from .launcher import supervise
    from .preflight import StoreDown, check_stores

    settings = Settings()
    try:
        graph, classes = load_checked(graph_file)
        functions = pick(graph)
        stores = {"rabbitmq"} | {s for name in functions for s in getattr(classes[name], "stores", ())}
        check_stores(sorted(stores), settings)
    except (GraphError, StoreDown, KeyError) as exc:
        return _fail(exc)
    try:
        for hook in entry_points(group="scaigrid.before_up"):  # database migrations, local models
            hook.load()(settings, stores, graph)
    except GraphError as exc:
        return _fail(exc)
    return supervise(graph, classes, functions, settings.grace_seconds)


def cmd_up(args) -> int:
    return _launch(args.graph, lambda g: {n: f.replicas for n, f in g.functions.items() if f.replicas > 0})


def cmd_run(args) -> int:
    def pick(graph):
        if args.name not in graph.functions:
            raise GraphError([f"{graph.file}: no function '{args.name}'; one of: {', '.join(graph.functions)}"])
        return {args.name: args.replicas or graph.functions[args.name].replicas or 1}

    return _launch(args.graph, pick)


def _broker_down(exc: Exception) -> int:
    print(f"scaigrid: the broker at {redact_url(Settings().amqp_uri)} did not answer: {exc}", file=sys.stderr)
    return EXIT_STORE_DOWN


def cmd_ledger_dead_letters(args) -> int:
    from kombu.exceptions import KombuError

    from .dead_letters import browse

    try:
        letters, total = browse(Settings().amqp_uri, args.limit)
    except (OSError, KombuError) as exc:
        return _broker_down(exc)
    for letter in letters:
        error = (letter.error.splitlines() or [""])[0]
        print(f"{letter.at or '-'}  {letter.queue or '-'}  {letter.request_id or '-'}  {error}")
    shown = f"{len(letters)} of {total}" if len(letters) < total else str(total)
    print(f"{shown} dead letter(s); `scaigrid ledger replay` puts them back on their queues", file=sys.stderr)
    return 0


def cmd_ledger_replay(args) -> int:
    from kombu.exceptions import KombuError

    from .dead_letters import replay

    if not args.all and not args.request_id:
        print("scaigrid: say which: --all, or --request-id ID (repeatable)", file=sys.stderr)
        return EXIT_CONFIG
    try:
        done = replay(Settings().amqp_uri, None if args.all else set(args.request_id))
    except (OSError, KombuError) as exc:
        return _broker_down(exc)
    print(f"replayed {done.replayed} dead letter(s)")
    for queue, n in sorted(done.no_queue.items()):
        print(f"scaigrid: kept {n} dead letter(s) of queue '{queue}': it does not exist (start its consumer first)",
              file=sys.stderr)
    return 1 if done.no_queue else 0


def _doctor(args) -> int:
    from .doctor import cmd_doctor

    return cmd_doctor(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scaigrid", description="ScaiGrid: AI gateway of Nameko functions")
    sub = parser.add_subparsers(dest="command", required=True)

    graph = sub.add_parser("graph", help="check or show graph.yaml").add_subparsers(dest="graph_cmd", required=True)
    p = graph.add_parser("check", help="validate a graph file (exit 2 on problems)")
    p.add_argument("file", nargs="?", default=None)
    p.set_defaults(func=cmd_graph_check)
    p = graph.add_parser("show", help="print the routes (text or Mermaid)")
    p.add_argument("file", nargs="?", default=None)
    p.add_argument("--mermaid", action="store_true", help="a Mermaid flowchart for the docs")
    p.add_argument("--no-import", action="store_true", help="schema only: do not import the functions")
    p.set_defaults(func=cmd_graph_show)
    p = graph.add_parser("schema", help="print graph.yaml's JSON Schema")
    p.set_defaults(func=cmd_graph_schema)

    p = sub.add_parser("up", help="start every function with its replicas, and the gateway")
    p.add_argument("--graph", default=None)
    p.set_defaults(func=cmd_up)
    p = sub.add_parser("run", help="run one function")
    p.add_argument("name")
    p.add_argument("--replicas", type=int, default=None)
    p.add_argument("--graph", default=None)
    p.set_defaults(func=cmd_run)
    ledger = sub.add_parser("ledger", help="after-steps' dead letters: list and replay").add_subparsers(
        dest="ledger_cmd", required=True)
    p = ledger.add_parser("dead-letters", help="list the dead letters (queue, request id, error, when); none is "
                                              "consumed")
    p.add_argument("--limit", type=int, default=1000, help="list at most this many (default 1000)")
    p.set_defaults(func=cmd_ledger_dead_letters)
    p = ledger.add_parser("replay", help="put dead letters back on the queue they came from, once")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="every dead letter")
    which.add_argument("--request-id", action="append", metavar="ID", help="the dead letters of this request")
    p.set_defaults(func=cmd_ledger_replay)
    p = sub.add_parser("doctor", help="check the graph, every store, the schema, the models and the execution "
                                      "provider: one line each, with what to do (exit 1 when one failed)")
    p.add_argument("--graph", default=None)
    p.add_argument("--json", action="store_true", help="the checks as JSON (name, status, detail, fix)")
    p.set_defaults(func=_doctor)
    for command in entry_points(group="scaigrid.commands"):  # db, admin, models, deploy: each in its own module
        command.load()(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for attr in ("file", "graph"):
        if hasattr(args, attr) and getattr(args, attr) is None:
            setattr(args, attr, default_graph())
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
