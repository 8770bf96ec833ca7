"""Added latency of a 5-step route: all-remote vs all-inline vs mixed, side by side in one run.

Each variant is a real graph started with `scaigrid up` (own vhost); requests go through the HTTP gateway one at a
time, and the per-step durations come from the gateway's Server-Timing header (the executor's own clock, so HTTP
noise stays out of the step numbers). Usage: python bench/hops.py [--requests N]
"""
from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
import timeit
from pathlib import Path

import httpx

from scaigrid.runtime.testing import GraphProcess, percentile

HERE = Path(__file__).resolve().parent
STEPS = 5
VARIANTS = {  # placement of noop_1..noop_5
    "all-remote": ["remote"] * STEPS,
    "all-inline": ["inline"] * STEPS,
    "mixed": ["inline", "remote", "inline", "remote", "inline"],
}
TIMING = re.compile(r'dur=([0-9.]+);desc="([^"]+)"')


def graph_yaml(placements: list[str]) -> str:
    lines = ["version: 1", f"path: [{HERE}]", "functions:",
             "  gateway:", "    entry: scaigrid.functions.gateway.service:Gateway"]
    for i, placement in enumerate(placements, 1):
        lines += [f"  noop_{i}:", "    entry: noop:Noop", f"    placement: {placement}",
                  f"    replicas: {1 if placement == 'remote' else 0}"]
    lines += ["routes:", "  hops:", "    http: POST /hops", "    steps:"]
    lines += [f"      - noop_{i}.step" for i in range(1, STEPS + 1)]
    return "\n".join(lines) + "\n"



def measure(name: str, placements: list[str], requests: int, tmp: Path, log_level: str) -> dict:
    path = tmp / f"{name}.yaml"
    path.write_text(graph_yaml(placements))
    graph = GraphProcess(path, tmp, env={"SCAIGRID_LOG_LEVEL": log_level})
    try:
        graph.wait_ready()
        per_kind: dict[str, list[float]] = {"inline": [], "remote": []}
        route_ms, http_ms = [], []
        with httpx.Client(base_url=graph.base_url, timeout=30) as client:
            for i in range(requests + 100):
                started = time.perf_counter()
                r = client.post("/hops", json={"i": i})
                elapsed = (time.perf_counter() - started) * 1000
                r.raise_for_status()
                if i < 100:
                    continue  # warm-up: connections, JIT-free but caches and pools fill
                steps = [(float(d), s) for d, s in TIMING.findall(r.headers["server-timing"])]
                assert len(steps) == STEPS, r.headers["server-timing"]
                for (ms, step), placement in zip(steps, placements):
                    per_kind[placement].append(ms)
                route_ms.append(sum(ms for ms, _ in steps))
                http_ms.append(elapsed)
        return {"per_kind": per_kind, "route": route_ms, "http": http_ms}
    finally:
        graph.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--log-level", default="WARNING",
                        help="replicas' log level (INFO adds one JSON line per step)")
    args = parser.parse_args()
    plain = min(timeit.repeat("f(e)", setup="e={}\ndef f(x): return x", number=100000, repeat=5)) / 100000 * 1e3
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, placements in VARIANTS.items():
            results[name] = measure(name, placements, args.requests, Path(tmp), args.log_level)
    cols = list(VARIANTS)
    print(f"\n5-step route, {args.requests} sequential requests per variant, log level {args.log_level}")
    print(f"{'ms (median / p99)':<34}" + "".join(f"{c:>22}" for c in cols))

    def row(label: str, pick) -> None:
        cells = []
        for c in cols:
            values = pick(results[c])
            cells.append(f"{statistics.median(values):8.3f} / {percentile(values, 0.99):8.3f}" if values else "-")
        print(f"{label:<34}" + "".join(f"{cell:>22}" for cell in cells))

    row("one inline step", lambda r: r["per_kind"]["inline"])
    row("one remote step (RPC hop)", lambda r: r["per_kind"]["remote"])
    row("all 5 steps (executor)", lambda r: r["route"])
    row("whole HTTP request (client)", lambda r: r["http"])
    print(f"{'plain python call':<34}{plain:>22.5f}")
    inline = statistics.median(results["all-inline"]["per_kind"]["inline"])
    remote = statistics.median(results["all-remote"]["per_kind"]["remote"])
    print(f"\ntargets: inline step < 0.1 ms -> {inline:.3f} ms {'OK' if inline < 0.1 else 'MISSED'}; "
          f"remote hop <= 2.5 ms median -> {remote:.3f} ms {'OK' if remote <= 2.5 else 'MISSED'}")


if __name__ == "__main__":
    main()
