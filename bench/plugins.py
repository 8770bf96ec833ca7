"""What the plugin steps cost: a tenant with no plugins vs one with PII redaction and a deny-list, side by side.

Runs tests/graphs/plugins.yaml (the product's auth and plugins inline in the gateway, a stand-in chat model) on a
throw-away database; the steps' own durations come from the Server-Timing header.
Target: a tenant with no plugins pays < 0.2 ms for plugins.before + plugins.after together.
Usage: python bench/plugins.py [--requests N]
"""
from __future__ import annotations

import argparse
import re
import statistics
import tempfile
from pathlib import Path

import httpx

from scaigrid.runtime.testing import GraphProcess, bootstrap_key, percentile, throwaway_database

GRAPH = Path(__file__).resolve().parents[1] / "tests" / "graphs" / "plugins.yaml"
TIMING = re.compile(r'dur=([0-9.]+);desc="(plugins\.(?:before|after))"')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    graph = None
    results = {}
    with throwaway_database("sg_bench") as url:
        try:
            key = bootstrap_key(url)
            graph = GraphProcess(GRAPH, Path(tempfile.mkdtemp()), env={"SCAIGRID_DATABASE_URL": url,
                                                                       "SCAIGRID_LOG_LEVEL": "WARNING"})
            graph.wait_ready()
            admin = {"Authorization": f"Bearer {key}"}
            with httpx.Client(base_url=graph.base_url, timeout=30) as client:
                for label, plugins in (("no plugins", []), ("pii_redaction + deny_list", [
                        ("pii_redaction", {"reversible": True}), ("deny_list", {"words": ["forbidden"]})])):
                    tenant = client.post("/api/v1/tenants", json={"name": label.replace(" ", "-").replace("+", "and")},
                                         headers=admin).json()
                    tkey = client.post(f"/api/v1/tenants/{tenant['id']}/keys", json={"name": "k", "role": "tenant-admin"},
                                       headers=admin).json()["key"]
                    headers = {"Authorization": f"Bearer {tkey}"}
                    for kind, config in plugins:
                        client.post("/api/v1/plugins", json={"name": kind, "kind": kind, "config": config},
                                    headers=headers).raise_for_status()
                    body = {"model": "parrot", "messages": [{"role": "user", "content": "mail me at bob@example.com"}]}
                    totals = []
                    for i in range(args.requests + 100):
                        r = client.post("/v1/chat/completions", json=body, headers=headers)
                        r.raise_for_status()
                        if i >= 100:
                            totals.append(sum(float(ms) for ms, _ in TIMING.findall(r.headers["server-timing"])))
                    results[label] = totals
        finally:
            if graph is not None:
                graph.stop()
    print(f"\nplugins.before + plugins.after, inline, ms   {'median':>8} {'p99':>8}")
    for label, values in results.items():
        print(f"{label:<44} {statistics.median(values):8.3f} {percentile(values, 0.99):8.3f}")
    none = statistics.median(results["no plugins"])
    print(f"\ntarget: no plugins < 0.2 ms for both steps -> {none:.3f} ms {'OK' if none < 0.2 else 'MISSED'}")


if __name__ == "__main__":
    main()
