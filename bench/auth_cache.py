"""The auth step's cost, inline in the gateway: key-cache hit vs miss (PostgreSQL), side by side in one run.

Starts graph.yaml on a throw-away database, bootstraps a key and calls GET /api/v1/me; the step's own duration
comes from the Server-Timing header. Target (docs/architecture.md): an inline auth hit < 0.1 ms.
Usage: python bench/auth_cache.py [--requests N]
"""
from __future__ import annotations

import argparse
import re
import statistics
import tempfile
from pathlib import Path

import httpx

from scaigrid.runtime.testing import GraphProcess, bootstrap_key, percentile, throwaway_database

REPO = Path(__file__).resolve().parents[1]
AUTH = re.compile(r'dur=([0-9.]+);desc="auth.authenticate"')


def auth_ms(response: httpx.Response) -> float:
    response.raise_for_status()
    return float(AUTH.search(response.headers["server-timing"]).group(1))



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    graph = None
    with throwaway_database("sg_bench") as url:
        try:
            key = bootstrap_key(url)
            graph = GraphProcess(REPO / "graph.yaml", Path(tempfile.mkdtemp()),
                                 env={"SCAIGRID_DATABASE_URL": url, "SCAIGRID_LOG_LEVEL": "WARNING"})
            graph.wait_ready()
            with httpx.Client(base_url=graph.base_url, timeout=30) as client:
                me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {key}"}).json()
                tenant = me["tenant"]["id"]
                misses = []
                for i in range(100):  # each new key's first use misses both cache levels
                    fresh = client.post(f"/api/v1/tenants/{tenant}/keys", json={"name": f"b{i}"},
                                        headers={"Authorization": f"Bearer {key}"}).json()["key"]
                    misses.append(auth_ms(client.get("/api/v1/me", headers={"Authorization": f"Bearer {fresh}"})))
                hits = [auth_ms(client.get("/api/v1/me", headers={"Authorization": f"Bearer {key}"}))
                        for _ in range(args.requests)]
        finally:
            if graph is not None:
                graph.stop()
    print(f"\nauth.authenticate inline, ms         {'median':>10} {'p99':>10}")
    print(f"{'cache hit (in process)':<36} {statistics.median(hits):10.3f} {percentile(hits, 0.99):10.3f}")
    print(f"{'cache miss (PostgreSQL + Redis set)':<36} {statistics.median(misses):10.3f} {percentile(misses, 0.99):10.3f}")
    hit = statistics.median(hits)
    print(f"\ntarget: inline auth hit < 0.1 ms -> {hit:.3f} ms {'OK' if hit < 0.1 else 'MISSED'}")


if __name__ == "__main__":
    main()
