"""Soak: graph.yaml as shipped under a steady mix of traffic for --minutes; every process's resident memory after
warm-up and at the end, side by side in one run, and every answer checked.

Starts what a user runs (a throw-away database with its bootstrapped platform key, `scaigrid models prepare`,
graph.yaml under `scaigrid up`, no knowledge graph); over HTTP only it makes a tenant with a tenant-admin key and a
collection (knowledge_graph: false) of a few documents, and waits for their ingestion jobs. Then, open loop at
--rate requests/s in all (the next request leaves on the clock, not when the last one answered), a fixed cycle of
chat (max_tokens 8), streamed chat, embeddings, RAG search and key creation, sent from --workers threads with a
--timeout each. Every non-2xx answer, malformed body or exception (a timeout included) is an error; the first few
are printed as they happen. With every worker busy the next request waits for one: how many left over 1 s late
is printed (the rate was not held), but is no error.

Memory: VmRSS of the supervisor and of every replica of every function of the graph, sampled while traffic runs,
at the end of warm-up (--warmup, default 20 % of the run and at least 30 s: pools, caches and the models' arenas
fill) and at the end. A replica restarted in between is an error. Target (issue 13): over 30 minutes no process
grows >= 5 % after warm-up, and no error. The memory verdict is given only for runs of 10 minutes or more: growth
over 2 minutes proves nothing. CI (tests/test_soak_smoke.py) runs `--minutes 2 --smoke`: no errors, no verdict.
Exit code 1 on any error, or on a missed memory target.

Usage: python bench/soak.py [--minutes 30] [--rate 4] [--workers 32] [--timeout 60] [--warmup S] [--smoke]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from scaigrid.runtime.graph import load_graph
from scaigrid.runtime.testing import SCAIGRID, GraphProcess, bootstrap_key, percentile, throwaway_database

GRAPH = Path(__file__).resolve().parents[1] / "graph.yaml"
CHAT, EMBED = "smollm2-135m-instruct", "all-minilm-l6-v2"
# the fixed cycle of kinds: generation is what costs, so chat is half of it; a key every 9th request
MIX = ("chat", "stream", "embed", "search", "chat", "stream", "embed", "search", "key")
KINDS = ("chat", "stream", "embed", "search", "key")
DOCUMENTS = {
    "tea.txt": "Green tea is steamed or pan-fired quickly after picking, which stops oxidation and keeps it green.",
    "basalt.txt": "Basalt is a dark, fine-grained volcanic rock that forms when lava rich in iron cools quickly.",
    "bees.txt": "Honey bees dance to tell the hive where flowers are: the angle of the waggle points to the food.",
    "rust.txt": "Iron rusts when water and oxygen reach it; salt speeds the reaction, paint and zinc keep it away.",
}
QUERIES = ("how is green tea made", "volcanic rock from lava", "how do bees find flowers", "what stops rust",
           "oxidation", "dark rock", "waggle dance", "zinc coating")
SHOWN_ERRORS = 5


class Failed(Exception):
    """An answer that is not what the route promises: its status and (the start of) its body."""

    def __init__(self, status: int | str, body: str):
        super().__init__(f"{status}: {body[:300]}")


def expect(r: httpx.Response, status: int = 200) -> dict:
    if r.status_code != status:
        raise Failed(r.status_code, r.text)
    return r.json()


class Traffic:
    """One kind of request per method, each checking its answer; one HTTP client per worker thread."""

    def __init__(self, base_url: str, key: str, tenant: str, collection: str, timeout: float):
        self.base_url, self.tenant, self.collection, self.timeout = base_url, tenant, collection, timeout
        self.headers = {"Authorization": f"Bearer {key}"}
        self.local = threading.local()

    def client(self) -> httpx.Client:
        if not hasattr(self.local, "client"):
            self.local.client = httpx.Client(base_url=self.base_url, headers=self.headers, timeout=self.timeout)
        return self.local.client

    @staticmethod
    def ask(i: int) -> list[dict]:
        # a different prompt every time: no cache of any kind answers for the model
        return [{"role": "user", "content": f"Give one word that rhymes with the number {i}."}]

    def chat(self, i: int) -> None:
        body = expect(self.client().post("/v1/chat/completions",
                                         json={"model": CHAT, "messages": self.ask(i), "max_tokens": 8}))
        if not body.get("choices") or body["choices"][0]["message"].get("content") is None:
            raise Failed(200, json.dumps(body))

    def stream(self, i: int) -> None:
        with self.client().stream("POST", "/v1/chat/completions", json={
                "model": CHAT, "messages": self.ask(i), "max_tokens": 8, "stream": True}) as r:
            if r.status_code != 200:
                r.read()
                raise Failed(r.status_code, r.text)
            lines = [line for line in r.iter_lines() if line.startswith("data: ")]
        # an error after the first chunk arrives inside the stream, as a data line of its own
        if not lines or lines[-1] != "data: [DONE]" or any("error" in json.loads(x[6:]) for x in lines[:-1]):
            raise Failed("200 stream", "\n".join(lines[-3:]))

    def embed(self, i: int) -> None:
        body = expect(self.client().post("/v1/embeddings",
                                         json={"model": EMBED, "input": f"sentence number {i} of the soak"}))
        if len(body.get("data", [])) != 1 or len(body["data"][0]["embedding"]) != 384:
            raise Failed(200, json.dumps(body)[:300])

    def search(self, i: int) -> None:
        body = expect(self.client().post(f"/api/v1/collections/{self.collection}/search",
                                         json={"query": QUERIES[i % len(QUERIES)], "top_k": 3}))
        if not body.get("data"):  # four indexed documents: a hybrid search always finds some
            raise Failed(200, json.dumps(body))

    def key(self, i: int) -> None:
        body = expect(self.client().post(f"/api/v1/tenants/{self.tenant}/keys", json={"name": f"soak-{i}"}), 201)
        if not body.get("key"):
            raise Failed(201, json.dumps(body))


class Tally:
    """Sent / ok / errors and latencies per kind; prints the first few errors as they happen."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sent = {k: 0 for k in KINDS}
        self.ms: dict[str, list[float]] = {k: [] for k in KINDS}
        self.errors: list[tuple[str, str]] = []
        self.lags: list[float] = []  # seconds each request left after its time on the open-loop clock

    def ok(self, kind: str, ms: float) -> None:
        with self.lock:
            self.ms[kind].append(ms)

    def error(self, kind: str, what: str) -> None:
        with self.lock:
            self.errors.append((kind, what))
            if len(self.errors) <= SHOWN_ERRORS:
                print(f"error #{len(self.errors)} ({kind}): {what}", flush=True)


def drive(traffic: Traffic, tally: Tally, rate: float, seconds: float, workers: int, at_warmup: float,
          sample) -> tuple[dict, dict]:
    """Open loop: request n leaves at start + n / rate. `sample()` runs once the clock passes `at_warmup` and once
    at the end, both while traffic still flows (a sample taken after draining would hold less in flight)."""
    slots = threading.BoundedSemaphore(workers)

    def one(kind: str, n: int) -> None:
        started = time.perf_counter()
        try:
            getattr(traffic, kind)(n)
            tally.ok(kind, (time.perf_counter() - started) * 1000)
        except Exception as e:  # noqa: BLE001 -- every failure counts, whatever raised it
            tally.error(kind, str(e) if isinstance(e, Failed) else f"{type(e).__name__}: {e}")
        finally:
            slots.release()

    before, minute = None, 1
    start = time.monotonic()
    end = start + seconds  # the run ends on the wall clock, however far behind the graph fell
    with ThreadPoolExecutor(workers) as pool:
        n = 0
        while (due := start + n / rate) < end and (now := time.monotonic()) < end:
            if before is None and now >= start + at_warmup:
                before = sample()
            if now >= start + 60 * minute:  # a line a minute: the trend, where two samples give only the ends
                rss = " ".join(f"{name} {(m or 0) / 2**20:.0f}" for name, (_, m) in sample().items())
                print(f"{minute:3d} min: {n} sent, {len(tally.errors)} errors; RSS MiB: {rss}", flush=True)
                minute += 1
            time.sleep(max(0.0, due - now))
            # bounded: with every worker busy the clock waits (what is late is counted, and leaves as soon as it
            # can); a graph that stopped answering shows as timeouts, which are errors
            if not slots.acquire(timeout=max(0.0, end - time.monotonic())):
                break
            tally.lags.append(time.monotonic() - due)
            kind = MIX[n % len(MIX)]
            tally.sent[kind] += 1
            pool.submit(one, kind, n)
            n += 1
        after = sample()
    return before, after


def vmrss(pid: int) -> int | None:
    """Resident set size in bytes (/proc/PID/status VmRSS), or None when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    return None


def resident(graph: GraphProcess, functions: list[str]) -> dict[str, tuple[int, int | None]]:
    """{process: (pid, RSS)} for the supervisor and every replica of every function (inline ones have none)."""
    out = {"supervisor": (graph.proc.pid, vmrss(graph.proc.pid))}
    for function in functions:
        for n, pid in enumerate(graph.replica_pids(function)):  # in start order: replica index order
            out[f"{function}[{n}]"] = (pid, vmrss(pid))
    return out


def prepare(graph: GraphProcess, admin_key: str, timeout: float) -> Traffic:
    """A tenant, its tenant-admin key, a collection of DOCUMENTS with every ingestion job succeeded."""
    with httpx.Client(base_url=graph.base_url + "/api/v1", timeout=120,
                      headers={"Authorization": f"Bearer {admin_key}"}) as admin:
        tenant = expect(admin.post("/tenants", json={"name": "soak"}), 201)["id"]
        key = expect(admin.post(f"/tenants/{tenant}/keys", json={"name": "soak", "role": "tenant-admin"}), 201)
    with httpx.Client(base_url=graph.base_url + "/api/v1", timeout=120,
                      headers={"Authorization": f"Bearer {key['key']}"}) as api:
        collection = expect(api.post("/collections", json={"name": "soak", "knowledge_graph": False}), 201)["id"]
        jobs = [expect(api.post(f"/collections/{collection}/documents", json={"name": name, "text": text}), 202)
                ["job_id"] for name, text in DOCUMENTS.items()]
        deadline = time.monotonic() + 300
        for job_id in jobs:
            while (job := expect(api.get(f"/jobs/{job_id}")))["status"] not in ("succeeded", "failed", "cancelled"):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"ingestion job {job_id} still {job['status']} after 300 s")
                time.sleep(0.2)
            if job["status"] != "succeeded":
                raise RuntimeError(f"ingestion job failed: {job}")
    return Traffic(graph.base_url, key["key"], tenant, collection, timeout)


def report(before: dict, after: dict, tally: Tally, timings: dict, verdict: bool) -> float:
    """Prints the memory table and the request table; returns the worst growth in %."""
    print(f"\n{'process':<16}{'pid':>9}{'RSS after warm-up MiB':>23}{'RSS at end MiB':>16}{'growth %':>10}")
    worst = 0.0
    for name, (pid, start) in before.items():
        end_pid, end = after.get(name, (None, None))
        if start is None or end is None or end_pid != pid:
            tally.error("process", f"{name} (pid {pid}) gone or restarted (now pid {end_pid})")
            print(f"{name:<16}{pid:>9}{'-':>23}{'-':>16}{'-':>10}")
            continue
        growth = 100.0 * (end - start) / start
        worst = max(worst, growth)
        print(f"{name:<16}{pid:>9}{start / 2**20:23.1f}{end / 2**20:16.1f}{growth:10.2f}")
    print(f"\n{'requests':<10}{'sent':>8}{'ok':>8}{'errors':>8}{'p50 ms':>10}{'p99 ms':>10}")
    for kind in KINDS:
        ms, errors = tally.ms[kind], sum(1 for k, _ in tally.errors if k == kind)
        p50, p99 = (f"{percentile(ms, q):10.1f}" for q in (0.5, 0.99)) if ms else (f"{'-':>10}",) * 2
        print(f"{kind:<10}{tally.sent[kind]:8d}{len(ms):8d}{errors:8d}{p50}{p99}")
    sent, ok = sum(tally.sent.values()), sum(len(v) for v in tally.ms.values())
    print(f"{'all':<10}{sent:8d}{ok:8d}{len(tally.errors):8d}")
    late = [lag for lag in tally.lags if lag > 1]
    print(f"\nrate: {len(tally.lags) - len(late)} of {len(tally.lags)} requests left on time (within 1 s); "
          + (f"{len(late)} late, by {max(late):.1f} s at most: the graph did not keep up" if late else "held"))
    print("timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    target = "OK" if worst < 5 else "MISSED"
    print(f"memory: worst growth after warm-up {worst:.2f} % -> "
          + (f"target < 5 %: {target}" if verdict else "no verdict (smoke, or a run under 10 minutes)"))
    print(f"soak: {sent} sent, {ok} ok, {len(tally.errors)} errors")
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30, help="the whole run, warm-up included")
    parser.add_argument("--rate", type=float, default=4.0, help="requests/s in all (open loop)")
    parser.add_argument("--workers", type=int, default=32, help="requests in flight at most")
    parser.add_argument("--timeout", type=float, default=60, help="seconds per request")
    parser.add_argument("--warmup", type=float, help="seconds (default: 20 %% of the run, at least 30)")
    parser.add_argument("--smoke", action="store_true", help="no memory verdict: only that nothing failed")
    args = parser.parse_args()
    seconds = args.minutes * 60
    warmup = args.warmup if args.warmup is not None else max(30.0, 0.2 * seconds)
    if not 0 < warmup < seconds:
        parser.error(f"the warm-up ({warmup:.0f} s) must be shorter than the run ({seconds:.0f} s)")
    if args.rate * (seconds - warmup) < 1:
        parser.error("no request would leave after the warm-up: raise --rate or --minutes")
    verdict = not args.smoke and args.minutes >= 10
    functions = list(load_graph(GRAPH).functions)
    tally, timings, graph = Tally(), {}, None
    began = time.monotonic()
    with throwaway_database("sg_bench_soak") as url:
        try:
            subprocess.run([*SCAIGRID, "models", "prepare"], check=True, timeout=3600)  # idempotent, sha256-checked
            key = bootstrap_key(url)
            tmp = Path(tempfile.mkdtemp(prefix="soak-"))
            graph = GraphProcess(GRAPH, tmp, env={"SCAIGRID_DATABASE_URL": url, "SCAIGRID_LOG_LEVEL": "WARNING"})
            print(f"starting graph.yaml (log: {graph.log_path}) ...", flush=True)
            graph.wait_ready(timeout=300)
            traffic = prepare(graph, key, args.timeout)
            timings["start-up and ingestion"] = time.monotonic() - began
            print(f"driving {args.rate}/s for {seconds:.0f} s ({warmup:.0f} s warm-up) ...", flush=True)
            began = time.monotonic()
            before, after = drive(traffic, tally, args.rate, seconds, args.workers, warmup,
                                  lambda: resident(graph, functions))
            timings["traffic"] = time.monotonic() - began
            worst = report(before, after, tally, timings, verdict)
            if tally.errors:  # the graph's own warnings and errors say why
                print("\nlast lines of the graph's log:\n" + "\n".join(graph.log_path.read_text().splitlines()[-30:]))
        finally:
            if graph is not None:
                graph.stop()
    return 1 if tally.errors or (verdict and worst >= 5) else 0


if __name__ == "__main__":
    raise SystemExit(main())
