"""Per-function scaling: throughput of a CPU-bound function with 1 vs 2 replicas, and its queue depth in a burst.

Each variant is a real graph started with `scaigrid up` (own vhost, own port): a gateway and `burn`, a step that
does ~20 ms of pure-Python work. Closed-loop HTTP load from threads (loopback, bounded in count and time) gives
req/s and latency; then a burst of requests arrives at once while RabbitMQ's `rpc-burn` queue depth is sampled
(kombu passive declare: messages ready, not yet taken by a replica). The gateway's pool (400) exceeds the burst,
so every request of the burst is in flight at once and waits in the queue, not at the gateway.
Usage: python bench/scaling.py [--seconds 10] [--clients 8] [--burst 256] [--pool 1]
"""
from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
from kombu import Connection

from scaigrid.runtime.testing import GraphProcess

HERE = Path(__file__).resolve().parent
TARGET_MS = 20.0


def calibrate() -> int:
    """Iterations of cpu_fn.burn that take ~20 ms on an idle core of this machine."""
    import sys

    sys.path.insert(0, str(HERE))
    from cpu_fn import burn

    n = 20000
    while True:
        started = time.perf_counter()
        burn(n)
        ms = (time.perf_counter() - started) * 1000
        if ms > 5:
            return int(n * TARGET_MS / ms)
        n *= 2


def graph_yaml(replicas: int, pool: int, iterations: int) -> str:
    return "\n".join([
        "version: 1", f"path: [{HERE}]", "functions:",
        "  gateway:", "    entry: scaigrid.functions.gateway.service:Gateway", "    pool: 400",
        "  burn:", "    entry: cpu_fn:Burn", f"    replicas: {replicas}", f"    pool: {pool}", "    timeout: 120",
        f"    config: {{iterations: {iterations}}}",
        "routes:", "  burn:", "    http: POST /burn", "    steps: [burn.step]", ""])


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def closed_loop(base_url: str, clients: int, seconds: float) -> dict:
    """`clients` threads, each sending the next request when the last one answered, for `seconds`."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(base_url=base_url, timeout=60) as http:
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                ok = http.post("/burn", json={}).status_code == 200
                with lock:
                    if ok:
                        latencies.append((time.perf_counter() - started) * 1000)
                    else:
                        errors[0] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    return {"rps": len(latencies) / elapsed, "p50": pct(latencies, 0.5), "p99": pct(latencies, 0.99),
            "errors": errors[0]}


def burst(base_url: str, amqp_uri: str, count: int) -> dict:
    """`count` requests in flight at once (one asyncio client); the burn queue's depth sampled every 50 ms."""
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        with Connection(amqp_uri) as conn:
            channel = conn.channel()
            while not done.is_set():
                samples.append(channel.queue_declare("rpc-burn", passive=True)[1])
                time.sleep(0.05)

    async def send_all() -> list[bool]:
        limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
        async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as http:
            async def one() -> bool:
                return (await http.post("/burn", json={})).status_code == 200
            return await asyncio.gather(*(one() for _ in range(count)))

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.monotonic()
    try:
        results = asyncio.run(send_all())
    finally:
        done.set()
        sampler.join()
    return {"peak": max(samples), "mean": statistics.mean(samples), "drain_s": time.monotonic() - started,
            "ok": sum(results), "count": count}


def measure(replicas: int, args, iterations: int, tmp: Path) -> dict:
    path = tmp / f"scaling-{replicas}.yaml"
    path.write_text(graph_yaml(replicas, args.pool, iterations))
    graph = GraphProcess(path, tmp, env={"SCAIGRID_LOG_LEVEL": "WARNING"})
    try:
        graph.wait_ready()
        closed_loop(graph.base_url, args.clients, 2)  # warm-up: connections, pools, caches
        load = closed_loop(graph.base_url, args.clients, args.seconds)
        time.sleep(1)
        return {**load, **burst(graph.base_url, graph.vhost.uri, args.burst)}
    finally:
        graph.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10, help="closed-loop load per variant")
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients")
    parser.add_argument("--burst", type=int, default=256, help="requests sent at once")
    parser.add_argument("--pool", type=int, default=1, help="burn's pool (nameko workers, = prefetch) per replica")
    args = parser.parse_args()
    iterations = calibrate()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for replicas in (1, 2):
            results[replicas] = measure(replicas, args, iterations, Path(tmp))
    r1, r2 = results[1], results[2]
    print(f"\nCPU-bound step (~{TARGET_MS:.0f} ms of pure Python, {iterations} iterations), pool {args.pool}; "
          f"{os.cpu_count()} cores shared by the client, the gateway, RabbitMQ and the replicas")
    print(f"{'':<44}{'1 replica':>14}{'2 replicas':>14}{'ratio':>8}")

    def row(label: str, key: str, fmt: str, ratio: bool = False) -> None:
        extra = f"{r2[key] / r1[key]:>8.2f}" if ratio else ""
        print(f"{label:<44}{format(r1[key], fmt):>14}{format(r2[key], fmt):>14}{extra}")

    row(f"throughput, {args.clients} clients x {args.seconds:.0f} s (req/s)", "rps", ".1f", ratio=True)
    row("latency p50 (ms)", "p50", ".1f")
    row("latency p99 (ms)", "p99", ".1f")
    row("errors", "errors", "d")
    row(f"burst of {args.burst}: peak queue depth (msgs)", "peak", "d")
    row(f"burst of {args.burst}: mean queue depth (msgs)", "mean", ".1f")
    row(f"burst of {args.burst}: all answered after (s)", "drain_s", ".2f")
    row(f"burst of {args.burst}: answered 200", "ok", "d")
    for r in (r1, r2):  # what KEDA's RabbitMQ scaler (QueueLength, value 20 per replica) asks for at the peak
        r["keda"] = math.ceil(r["peak"] / 20)
    row("KEDA replicas wanted at the peak (20/replica)", "keda", "d")
    print(f"\nideal on idle cores: {1000 / TARGET_MS:.0f} req/s per replica")


if __name__ == "__main__":
    main()
