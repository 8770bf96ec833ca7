"""The checks of a graph that need its code: entries import, steps are RPC methods, every function is reachable."""
from __future__ import annotations

import importlib
import sys
from typing import Iterator

from nameko.extensions import ENTRYPOINT_EXTENSIONS_ATTR
from nameko.rpc import Rpc
from nameko.web.handlers import HttpRequestHandler

from .graph import Graph, GraphError, load_graph


def add_search_path(graph: Graph) -> None:
    """Make the folders named by graph.yaml's `path:` importable (a user's functions live there)."""
    for folder in graph.search_path():
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))


def import_entry(entry: str) -> type:
    """'package.module:Class' -> the class (ImportError/AttributeError propagate)."""
    module_name, _, attr = entry.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def entrypoints_of(cls: type, method: str) -> set:
    return getattr(getattr(cls, method, None), ENTRYPOINT_EXTENSIONS_ATTR, set())


def is_rpc(cls: type, method: str) -> bool:
    return any(isinstance(ep, Rpc) for ep in entrypoints_of(cls, method))


def is_ingress(cls: type) -> bool:
    """A function with HTTP entrypoints is where requests enter: it needs no caller."""
    return any(isinstance(ep, HttpRequestHandler)
               for name in dir(cls) for ep in entrypoints_of(cls, name))


def _edges(graph: Graph) -> Iterator[tuple[tuple, str, bool]]:
    """(location in the file, 'function.method', must be an RPC step) for every edge of the graph."""
    for rname, route in graph.routes.items():
        for i, step in enumerate(route.step_specs()):
            yield ("routes", rname, "steps", i), step.step, True
        for i, step in enumerate(route.after_specs()):
            yield ("routes", rname, "after", i), step.step, False
        for i, step in enumerate(route.chunk_specs()):
            yield ("routes", rname, "chunks", i), step.step, True
    for fname, fn in graph.functions.items():
        for i, ref in enumerate(fn.calls):
            yield ("functions", fname, "calls", i), ref, True
        for i, ref in enumerate(fn.emits):
            yield ("functions", fname, "emits", i), ref, False


def check_graph(graph: Graph) -> dict[str, type]:
    """Import every function and check every edge; returns the classes. Raises GraphError with all problems."""
    add_search_path(graph)
    problems: list[str] = []
    classes: dict[str, type] = {}
    for name, fn in graph.functions.items():
        try:
            cls = import_entry(fn.entry)
        except (ImportError, AttributeError) as exc:
            hint = " (add its folder to 'path:')" if isinstance(exc, ImportError) else ""
            problems.append(f"{graph.where('functions', name, 'entry')}: function '{name}': cannot import "
                            f"'{fn.entry}': {exc}; fix 'entry'{hint}")
            continue
        if not isinstance(cls, type):
            problems.append(f"{graph.where('functions', name, 'entry')}: '{fn.entry}' is not a class; "
                            f"point 'entry' at a nameko service class")
            continue
        classes[name] = cls

    used: set[str] = set()
    for loc, ref, needs_rpc in _edges(graph):
        fname, _, method = ref.partition(".")
        used.add(fname)
        if fname not in graph.functions:
            known = ", ".join(sorted(graph.functions))
            problems.append(f"{graph.where(*loc)}: step '{ref}': unknown function '{fname}'; "
                            f"use one of: {known}, or declare it under 'functions:'")
            continue
        cls = classes.get(fname)
        if cls is None:
            continue  # its import error is already reported
        if not callable(getattr(cls, method, None)):
            methods = ", ".join(sorted(m for m in dir(cls) if is_rpc(cls, m))) or "none"
            problems.append(f"{graph.where(*loc)}: step '{ref}': '{cls.__name__}' has no method '{method}'; "
                            f"RPC methods it has: {methods}")
        elif needs_rpc and not is_rpc(cls, method):
            problems.append(f"{graph.where(*loc)}: step '{ref}': method '{method}' is not an RPC entrypoint; "
                            f"decorate it with @rpc")

    for rname, route in graph.routes.items():
        for i, step in enumerate(route.chunk_specs()):
            fn = graph.functions.get(step.function)
            if fn is not None and fn.placement != "inline":
                problems.append(f"{graph.where('routes', rname, 'chunks', i)}: chunk step '{step.step}' runs on "
                                f"every streamed chunk, so its function must be placement: inline")
    after = {s.step for r in graph.routes.values() for s in r.after_specs()}
    for name, fn in graph.functions.items():
        for i, ref in enumerate(fn.emits):
            if ref not in after:
                problems.append(f"{graph.where('functions', name, 'emits', i)}: '{ref}' is no route's 'after' step, "
                                f"so no queue consumes what '{name}' emits; add it to a route's 'after' or remove it")
        if fn.placement == "remote" and fn.replicas == 0 and name in used:
            problems.append(f"{graph.where('functions', name, 'replicas')}: function '{name}' is remote with "
                            f"replicas: 0, so nothing would serve its steps; give it replicas >= 1 or "
                            f"placement: inline")
        cls = classes.get(name)
        if name not in used and cls is not None and not is_ingress(cls):
            problems.append(f"{graph.where('functions', name)}: function '{name}' is unreachable: no route step, "
                            f"'after' step or 'calls' uses it; use it in a route or remove it")
    if problems:
        raise GraphError(problems)
    return classes


def load_checked(file) -> tuple[Graph, dict[str, type]]:
    """Load, schema-check and code-check a graph file."""
    graph = load_graph(file)
    return graph, check_graph(graph)
