"""`scaigrid graph show`: the routes as readable text, or as a Mermaid flowchart for the docs."""
from __future__ import annotations

from .graph import Graph


def _fn_label(graph: Graph, name: str) -> str:
    fn = graph.functions[name]
    where = "inline" if fn.placement == "inline" else f"remote x{fn.replicas}"
    return f"{name} ({where}, {fn.timeout:g}s)"


def as_text(graph: Graph) -> str:
    lines = [f"graph {graph.file}", "", "functions:"]
    width = max(len(n) for n in graph.functions)
    for name, fn in graph.functions.items():
        where = "inline" if fn.placement == "inline" else "remote"
        calls = (f"  calls {', '.join(fn.calls)}" if fn.calls else "") + \
            (f"  emits {', '.join(fn.emits)}" if fn.emits else "")
        lines.append(f"  {name:<{width}}  {where:<6}  replicas={fn.replicas} pool={fn.pool} "
                     f"timeout={fn.timeout:g}s  {fn.entry}{calls}")
    lines += ["", "routes:"]
    for name, route in graph.routes.items():
        lines.append(f"  {name}  [{', '.join(route.http) or 'no http'}]  handler={route.handler}")
        for i, step in enumerate(route.step_specs(), 1):
            t = f"  timeout={step.timeout:g}s" if step.timeout else ""
            w = f"  when {step.when}" if step.when else ""
            lines.append(f"    {i}. {step.step}  ({graph.functions[step.function].placement}){t}{w}")
        for step in route.after_specs():
            lines.append(f"    after: {step.step}  (durable event)")
    return "\n".join(lines)


def as_mermaid(graph: Graph) -> str:
    lines = ["flowchart LR"]
    for name in graph.functions:
        lines.append(f'  {name}["{_fn_label(graph, name)}"]')
    for rname, route in graph.routes.items():
        entry = f"route_{rname}"
        lines.append(f'  {entry}(["{rname}: {"; ".join(route.http) or "no http"}"])')
        prev = entry
        for i, step in enumerate(route.step_specs(), 1):
            when = f" if {step.when}" if step.when else ""
            lines.append(f"  {prev} -->|{i}. {step.method}{when}| {step.function}")
            prev = step.function
        for step in route.after_specs():
            lines.append(f"  {entry} -.->|after: {step.method}| {step.function}")
    for name, fn in graph.functions.items():
        for ref in fn.calls:
            target, _, method = ref.partition(".")
            lines.append(f"  {name} ==>|calls {method}| {target}")
        for ref in fn.emits:
            target, _, method = ref.partition(".")
            lines.append(f"  {name} -.->|emits {method}| {target}")
    return "\n".join(lines)
