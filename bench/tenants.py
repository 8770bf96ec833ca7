"""Memory against the tenant count: every process's RSS at tenant 1,000 and at tenant 10,000, side by side in one run.

Starts a graph shaped like graph.yaml's chat path (a gateway with auth, accounting's admit and the plugins function
inline, accounting's ledger consumer as a replica of its own, a stand-in chat model: tests/demo_functions Parrot, so
no generation runs) on a throw-away database and its own Redis database; creates the tenants with a key each
directly through the product's repositories (IdentityRepository, PluginRepository: the HTTP API would take longer
than the bench), a plugin on every 10th tenant; then sends each tenant, in order, a plain request, a streamed one
and more plain ones if --requests asks. Every process's RSS (psutil) is sampled after tenants 1,000, 5,000 and 10,000.
Target: no process grows > 5 % between tenant 1,000 and 10,000 (every per-tenant cache is bounded; issue 12).

Not in CI: ~10 minutes on 2 cores with the defaults.
Usage: python bench/tenants.py [--tenants 10000] [--requests 2] [--workers 12]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import redis

from scaigrid.adapters.sql.engine import sessions_for
from scaigrid.adapters.sql.identity import IdentityRepository
from scaigrid.adapters.sql.plugin_store import PluginRepository
from scaigrid.functions.shared.api_keys import mint
from scaigrid.runtime.testing import GraphProcess, bootstrap_key, throwaway_database

REPO = Path(__file__).resolve().parents[1]
REDIS_URL = "redis://127.0.0.1:6379/13"  # a database of its own: its key count is this bench's alone
CHECKPOINTS = (1_000, 5_000, 10_000)
FUNCTIONS = ("gateway", "accounting", "parrot")  # the graph's replicas (auth and plugins run inside the gateway)
GRAPH = """
version: 1
path: [{demo}]
functions:
  gateway: {{entry: scaigrid.functions.gateway.service:Gateway, replicas: 1, pool: 200}}
  auth: {{entry: scaigrid.functions.auth.service:Auth, placement: inline, replicas: 0}}
  accounting: {{entry: scaigrid.functions.accounting.service:Accounting, placement: inline, replicas: 1}}
  plugins: {{entry: scaigrid.functions.plugins.service:Plugins, placement: inline, replicas: 0}}
  parrot:
    entry: demo:Parrot
    pool: 50
    config:
      models:
        - {{id: parrot, kind: chat, context_length: 4096, max_tokens: 64, price: {{prompt: 100, completion: 200}}}}
routes:
  chat:
    http: POST /v1/chat/completions
    handler: openai
    steps: [auth.authenticate, accounting.admit, plugins.before, accounting.top_up, parrot.chat, plugins.after]
    chunks: [plugins.on_chunk]
    after: [accounting.record]
"""
PLUGINS = (  # every 10th tenant: a system prompt; every 20th also a deny list (kept from matching the question)
    ("system_prompt", lambda i: {"content": f"You serve tenant {i}.", "mode": "prepend"}),
    ("deny_list", lambda i: {"words": [f"forbidden{i}"], "check": ["request", "answer"]}),
)


def create_tenants(url: str, count: int, workers: int) -> list[dict]:
    """`count` tenants with a tenant-admin key each, and their plugins, in PostgreSQL (and the plugin change
    broadcast on Redis, as the API does)."""
    identity = IdentityRepository(sessions_for(url, workers))
    plugins = PluginRepository(sessions_for(url, workers), redis.Redis.from_url(REDIS_URL), ttl=30)

    def one(i: int) -> dict:
        tenant = identity.create_tenant(f"bench-tenant-{i:05d}", None)
        key, lookup, secret_hash = mint()
        identity.create_key(tenant["id"], "bench", "tenant-admin", lookup, secret_hash, None, None, None)
        kinds = PLUGINS[:1 + (i % 20 == 0)] if i % 10 == 0 else ()
        for position, (kind, config) in enumerate(kinds):
            plugins.create(tenant["id"], kind, kind, config(i), (), 10 * (position + 1), True)
        return {"index": i, "id": tenant["id"], "key": key, "plugins": len(kinds)}

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, range(count)))


class Driver:
    """Sends each tenant its requests from a pool of threads, one HTTP client per thread; checks every answer."""

    def __init__(self, base_url: str, requests: int, workers: int):
        self.base_url, self.requests, self.workers = base_url, requests, workers
        self.local = threading.local()
        self.sent = 0
        self.lock = threading.Lock()

    def _client(self) -> httpx.Client:
        if not hasattr(self.local, "client"):
            self.local.client = httpx.Client(base_url=self.base_url, timeout=60)
        return self.local.client

    def tenant(self, t: dict) -> None:
        client, headers = self._client(), {"Authorization": f"Bearer {t['key']}"}
        question = f"hello from tenant {t['index']}"
        for n in range(self.requests):
            body = {"model": "parrot", "messages": [{"role": "user", "content": question}], "stream": n == 1}
            if n == 1:
                with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
                    r.raise_for_status()
                    lines = [line for line in r.iter_lines() if line.startswith("data: ")]
                assert lines[-1] == "data: [DONE]", lines[-3:]
                continue
            r = client.post("/v1/chat/completions", json=body, headers=headers)
            r.raise_for_status()
            received = r.json()["received"]["messages"]
            # the tenant's own chain ran: a system prompt naming it, or none at all
            assert (received[0]["content"] == f"You serve tenant {t['index']}.") == bool(t["plugins"]), received
        with self.lock:
            self.sent += self.requests

    def run(self, tenants: list[dict]) -> None:
        with ThreadPoolExecutor(self.workers) as pool:
            for _ in pool.map(self.tenant, tenants):
                pass


def rss_by_process(graph: GraphProcess) -> dict[str, int]:
    """RSS in bytes of the supervisor and of every replica, named as the supervisor logs them."""
    out = {"supervisor (scaigrid up)": psutil.Process(graph.proc.pid).memory_info().rss}
    for function in FUNCTIONS:
        for n, pid in enumerate(graph.replica_pids(function)):
            out[f"{function}[{n}]"] = psutil.Process(pid).memory_info().rss
    return out


def redis_counts(client: redis.Redis) -> dict[str, int]:
    markers = sum(1 for _ in client.scan_iter("scaigrid:reconciled:*", count=10_000))
    return {"keys": client.dbsize(), "reconciled markers": markers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=2, help="per tenant (the second one streamed)")
    parser.add_argument("--workers", type=int, default=12, help="client threads")
    args = parser.parse_args()
    checkpoints = [c for c in CHECKPOINTS if c < args.tenants] + [args.tenants]
    store = redis.Redis.from_url(REDIS_URL)
    store.flushdb()
    samples, counts, timings = {}, {}, {}
    graph = None
    with throwaway_database("sg_bench") as url:
        try:
            bootstrap_key(url)  # migrates
            began = time.monotonic()
            tenants = create_tenants(url, args.tenants, args.workers)
            timings["create tenants"] = time.monotonic() - began
            tmp = Path(tempfile.mkdtemp())
            (tmp / "graph.yaml").write_text(GRAPH.format(demo=REPO / "tests" / "demo_functions"))
            graph = GraphProcess(tmp / "graph.yaml", tmp, env={"SCAIGRID_DATABASE_URL": url,
                                                                "SCAIGRID_REDIS_URL": REDIS_URL,
                                                                "SCAIGRID_LOG_LEVEL": "WARNING"})
            graph.wait_ready()
            driver = Driver(graph.base_url, args.requests, args.workers)
            done, began = 0, time.monotonic()
            for checkpoint in checkpoints:
                driver.run(tenants[done:checkpoint])
                done = checkpoint
                time.sleep(2)  # after-steps (the ledger) and streams settle
                samples[checkpoint], counts[checkpoint] = rss_by_process(graph), redis_counts(store)
                print(f"tenant {checkpoint:>6}: {driver.sent} requests in {time.monotonic() - began:.0f} s",
                      flush=True)
            timings["requests"] = time.monotonic() - began
        finally:
            if graph is not None:
                graph.stop()
            store.flushdb()
    report(samples, counts, checkpoints, timings, driver.sent)


def report(samples: dict, counts: dict, checkpoints: list[int], timings: dict, sent: int) -> None:
    first, last = checkpoints[0], checkpoints[-1]
    heads = "".join(f"{f'RSS@{c // 1000}k MB' if c % 1000 == 0 else f'RSS@{c}':>13}" for c in checkpoints)
    print(f"\n{'process':<26}{heads}{'growth %':>10}")
    worst = 0.0
    for name in samples[last]:
        values = [samples[c].get(name) for c in checkpoints]
        growth = 100.0 * (values[-1] - values[0]) / values[0]
        worst = max(worst, growth)
        print(f"{name:<26}" + "".join(f"{v / 2**20:13.1f}" for v in values) + f"{growth:10.2f}")
    print(f"\nRedis (its own database): {json.dumps({c: counts[c] for c in checkpoints})}")
    print(f"{sent} requests for {last} tenants; tenants created in {timings['create tenants']:.0f} s, "
          f"requests in {timings['requests']:.0f} s ({sent / timings['requests']:.0f}/s)")
    print(f"target: every process < 5 % RSS growth from tenant {first} to {last} -> worst {worst:.2f} % "
          f"{'OK' if worst < 5 else 'MISSED'}")


if __name__ == "__main__":
    main()
