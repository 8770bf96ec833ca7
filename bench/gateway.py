"""ScaiGrid against LiteLLM's proxy, side by side in one run, behind one fast fake upstream (issue 15, point 1).

Both gateways front bench/fake_upstream.py on loopback (no delay: a fixed small completion with usage; a stream of
20 content chunks, a usage chunk and [DONE]), on the same machine, unpinned. ScaiGrid is graph.yaml as shipped plus
one upstream model (`bench-upstream`), on a throw-away database with a bootstrapped platform key; every request
carries a tenant member key and takes the chat route (auth, admission, plugins, ledger). LiteLLM is `litellm[proxy]`
(pinned in bench/gateway_sides.py, in its own virtualenv under ~/.cache/scaigrid/bench, made once) with 2 workers, no database, a
master key, LITELLM_LOG=ERROR (no access log: ScaiGrid runs at WARNING), the upstream as an `openai/` model.

Phases, interleaved (direct first, then the two gateways in an order that flips every round of 25, and every
load phase):
  sequential  --requests non-streamed requests on one connection each; added latency = gateway - direct median
  load        wrk (Debian's; installed if missing) for --seconds at 8 and at 32 connections: req/s, latency,
              the cores each side's process tree used (utime+stime from /proc over the wall time)
  streams     --streams streams one at a time: time to the first content chunk (TTFC) and to [DONE], minus direct
Every non-200, malformed answer or broken stream is an error. Exit 0 whatever the targets say (a measurement),
1 on errors, 2 when a side fails to start. Everything started is stopped at the end, also on Ctrl-C.
--tracing runs a second ScaiGrid in the same rounds with traces on (OTLP/HTTP to tests/otlp_receiver.py in its
own process) and prints what tracing costs: its numbers over the untraced ScaiGrid's (issue 16: added median
<= 1.2x).

Usage: python bench/gateway.py [--requests 400] [--seconds 12] [--streams 150] [--skip-litellm] [--tracing]
                               [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from scaigrid.runtime.testing import free_port, percentile
from soak import Failed

from gateway_sides import HERE, Side, start, start_litellm, start_receiver, start_scaigrid, wait_http

CHUNKS, ROUND = 20, 25
SERVICES = ("beam.smp", "redis-server", "postgres")  # the broker, Redis, PostgreSQL: what ScaiGrid leans on
TICK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(root: int) -> tuple[int, dict[int, int], int]:
    """utime+stime (clock ticks) of `root`'s live process tree; of each shared service's process (SERVICES);
    and the whole machine's busy ticks (/proc/stat: all but idle and iowait)."""
    children: dict[int, list[int]] = {}
    ticks, services = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        ticks[int(entry)] = int(rest[11]) + int(rest[12])
        children.setdefault(int(rest[1]), []).append(int(entry))
        if comm in SERVICES:
            services[int(entry)] = ticks[int(entry)]
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo += children.get(pid, [])
    cpu = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return total, services, sum(cpu) - cpu[3] - cpu[4]


def settle(side: Side, limit: float = 30) -> None:
    """Waits until the side's processes are idle (< 5 % of a core): ScaiGrid's ledger drains after a load."""
    deadline, last = time.monotonic() + limit, cpu_ticks(side.pid)[0]
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_ticks(side.pid)[0]
        if (now - last) / TICK < 0.025:
            return
        last = now


def interleaved(targets: list[Side], count: int, measure) -> dict[str, list]:
    """`count` calls of measure(client, side) per target, in rounds of ROUND: the direct target first, then the
    gateways in an order that flips every round. A short warm-up per target first (not kept)."""
    clients = {t.name: httpx.Client(base_url=t.base_url, headers=t.headers(), timeout=30) for t in targets}
    out: dict[str, list] = {t.name: [] for t in targets}
    try:
        for t in targets:
            for _ in range(10):
                measure(clients[t.name], t)
        for r in range(-(-count // ROUND)):
            order = [targets[0], *(targets[1:] if r % 2 == 0 else targets[:0:-1])]
            for t in order:
                for _ in range(min(ROUND, count - r * ROUND)):
                    if (value := measure(clients[t.name], t)) is not None:
                        out[t.name].append(value)
    finally:
        for client in clients.values():
            client.close()
    return out


def one_request(client: httpx.Client, side: Side):
    started = time.perf_counter()
    try:
        r = client.post("/v1/chat/completions", json=side.body(False))
        elapsed = (time.perf_counter() - started) * 1000
        if r.status_code != 200 or not r.json().get("choices"):
            raise Failed(r.status_code, r.text)
    except (httpx.HTTPError, ValueError, Failed) as e:
        side.errors += 1
        print(f"error ({side.name}, request): {e}", flush=True)
        return None
    return elapsed, float(r.headers.get("x-scaigrid-overhead-ms", "nan"))


def one_stream(client: httpx.Client, side: Side):
    """(ms to the first content chunk, ms to [DONE]); a broken stream (not 200, an error event, not CHUNKS
    content chunks, no usage, no [DONE]) is an error."""
    started, first, pieces, usage, done = time.perf_counter(), None, 0, False, None
    try:
        with client.stream("POST", "/v1/chat/completions", json=side.body(True)) as r:
            if r.status_code != 200:
                raise Failed(r.status_code, r.read().decode(errors="replace"))
            # read to the body's end, as the OpenAI SDK does after [DONE]: a response left unread closes its
            # connection, and every stream then paid a new TCP connection to each side
            for line in r.iter_lines():
                if not line.startswith("data: ") or done is not None:
                    continue
                if line == "data: [DONE]":
                    done = time.perf_counter()
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise Failed("stream", line)
                usage = usage or bool(chunk.get("usage"))
                if any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or []):
                    pieces += 1
                    first = first or time.perf_counter()
            if done is None:
                raise Failed("stream", "closed without [DONE]")
        if pieces != CHUNKS or not usage:
            raise Failed("stream", f"{pieces} content chunks, usage {'seen' if usage else 'missing'}")
    except (httpx.HTTPError, ValueError, Failed) as e:
        side.errors += 1
        print(f"error ({side.name}, stream): {e}", flush=True)
        return None
    return (first - started) * 1000, (done - started) * 1000


LUA = """wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
{auth}
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK %d %d %d %d %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


def wrk(side: Side, connections: int, seconds: int, tmp: Path) -> dict:
    """One wrk run: req/s, latency, errors; the cores the side's tree and the shared services used meanwhile,
    and the CPU it spent per request counting what it did after the load stopped (until idle)."""
    script = tmp / f"wrk-{side.pid}.lua"
    auth = f'wrk.headers["Authorization"] = {json.dumps("Bearer " + side.key)}' if side.key else ""
    script.write_text(LUA.format(body=json.dumps(json.dumps(side.body(False))), auth=auth))
    before, began = cpu_ticks(side.pid), time.perf_counter()
    run = subprocess.run(["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s",
                          "-s", str(script), f"{side.base_url}/v1/chat/completions"],
                         capture_output=True, text=True, timeout=seconds + 60)
    wall, after = time.perf_counter() - began, cpu_ticks(side.pid)
    settle(side)
    drained = cpu_ticks(side.pid)[0]
    line = next((x for x in run.stdout.splitlines() if x.startswith("WRK ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({run.returncode}): {run.stderr or run.stdout}")
    requests, duration, *errors, p50, p99, mean = (float(x) for x in line.split()[1:])
    side.errors += int(sum(errors))
    if sum(errors):
        print(f"error ({side.name}, wrk -c{connections}): connect/read/write/status/timeout {errors}", flush=True)
    return {"rps": requests / (duration / 1e6), "p50_ms": p50 / 1000, "p99_ms": p99 / 1000, "mean_ms": mean / 1000,
            "requests": int(requests), "errors": int(sum(errors)), "cores": (after[0] - before[0]) / TICK / wall,
            "service_cores": sum(t - before[1][p] for p, t in after[1].items() if p in before[1]) / TICK / wall,
            "machine_cores": (after[2] - before[2]) / TICK / wall,
            "cpu_ms_per_request": (drained - before[0]) / TICK * 1000 / max(requests, 1)}


def measure(sides: list[Side], direct: Side, args, tmp: Path) -> dict:
    got = interleaved([direct, *sides], args.requests, one_request)
    base = statistics.median(ms for ms, _ in got[direct.name])
    direct.numbers["total_median_ms"] = base
    for s in sides:
        totals = [ms for ms, _ in got[s.name]] or [float("nan")]
        median, p99 = statistics.median(totals), percentile(totals, 0.99)
        s.numbers.update(total_median_ms=median, total_p99_ms=p99, added_median_ms=median - base, added_p99_ms=p99 - base)
        if s.name.startswith("ScaiGrid"):
            s.numbers["own_overhead_header_ms"] = statistics.median(h for _, h in got[s.name])
    print(f"sequential: {args.requests} requests each done (direct median {base:.3f} ms)", flush=True)
    direct.numbers["load32"] = wrk(direct, 32, min(5, args.seconds), tmp)
    for s in sides:
        wrk(s, 32, 2, tmp)  # warm-up at the widest load: connection pools fill
    for n, connections in enumerate((8, 32)):
        for s in (sides if n % 2 == 0 else sides[::-1]):
            s.numbers[f"load{connections}"] = wrk(s, connections, args.seconds, tmp)
            print(f"load: {s.name} at {connections} connections: {s.numbers[f'load{connections}']['rps']:.0f} req/s",
                  flush=True)
    got = interleaved([direct, *sides], args.streams, one_stream)
    ttfc, done = (statistics.median(x[i] for x in got[direct.name]) for i in (0, 1))
    direct.numbers.update(ttfc_ms=ttfc, done_ms=done)
    for s in sides:
        rows = got[s.name] or [(float("nan"),) * 2]
        s.numbers.update(ttfc_overhead_ms=statistics.median(x[0] for x in rows) - ttfc,
                         done_overhead_ms=statistics.median(x[1] for x in rows) - done)
        s.numbers["per_chunk_ms"] = (s.numbers["done_overhead_ms"] - s.numbers["ttfc_overhead_ms"]) / CHUNKS
    print(f"streams: {args.streams} each done (direct TTFC {ttfc:.3f} ms, [DONE] {done:.3f} ms)", flush=True)
    return {s.name: {**s.numbers, "errors": s.errors} for s in [direct, *sides]}


def report(sg: Side, ll: Side | None, direct: Side) -> None:
    def get(side, key):
        value = side.numbers if side else {}
        for part in key.split("."):
            value = value.get(part, {}) if isinstance(value, dict) else {}
        return value if isinstance(value, (int, float)) else float("nan")

    n = sg.numbers
    ratio = lambda key: get(sg, key) / get(ll, key) if ll and get(ll, key) else float("nan")  # noqa: E731
    targets = {  # row key: (target text, met?)
        "added_median_ms": ("<= 0.3x LiteLLM", ratio("added_median_ms") <= 0.3),
        "total_p99_ms": ("<= 2x own median", n["total_p99_ms"] <= 2 * n["total_median_ms"]),
        "load32.rps": (">= 3x LiteLLM", ratio("load32.rps") >= 3),
        "ttfc_overhead_ms": ("<= 0.3x LiteLLM", ratio("ttfc_overhead_ms") <= 0.3),
        "done_overhead_ms": ("<= 0.3x LiteLLM", ratio("done_overhead_ms") <= 0.3),
        "per_chunk_ms": ("<= 0.3 ms", n["per_chunk_ms"] <= 0.3),
    }
    rows = [("sequential added latency, median ms", "added_median_ms"),
            ("sequential added latency, p99 ms", "added_p99_ms"),
            ("sequential total, median ms", "total_median_ms"), ("sequential total, p99 ms", "total_p99_ms"),
            ("req/s at 8 connections", "load8.rps"), ("req/s at 32 connections", "load32.rps"),
            ("latency at 8, median ms", "load8.p50_ms"), ("latency at 8, p99 ms", "load8.p99_ms"),
            ("latency at 32, median ms", "load32.p50_ms"), ("latency at 32, p99 ms", "load32.p99_ms"),
            ("stream TTFC overhead, median ms", "ttfc_overhead_ms"),
            ("stream [DONE] overhead, median ms", "done_overhead_ms"),
            ("per-chunk cost ms (a)", "per_chunk_ms"),
            ("cores used at 8 connections (b)", "load8.cores"), ("cores used at 32 connections (b)", "load32.cores"),
            ("shared services cores at 32 (c)", "load32.service_cores"),
            ("whole machine cores busy at 32 (e)", "load32.machine_cores"),
            ("CPU ms per request at 32 (d)", "load32.cpu_ms_per_request"), ("errors", "errors")]
    sg.numbers["errors"] = sg.errors
    if ll:
        ll.numbers["errors"] = ll.errors
    head = f"{'':<38}{'ScaiGrid':>11}{(ll.name if ll else 'LiteLLM (skipped)'):>19}{'SG/LL':>8}  {'target':<18}met"
    print("\n" + head + "\n" + "-" * len(head))
    for label, key in rows:
        target, met = targets.get(key, ("", None))
        verdict = "" if met is None else ("n/a" if "LiteLLM" in target and not ll else ("met" if met else "NOT met"))
        width = ".0f" if key == "errors" or key.endswith("rps") else ".3f"
        cells = [f"{get(sg, key):11{width}}", f"{get(ll, key):19{width}}", f"{ratio(key):8.2f}"]
        print(f"{label:<38}" + "".join(c.replace("nan", "  -") for c in cells) + f"  {target:<18}{verdict}")
    print(f"\ndirect to the upstream: sequential median {direct.numbers['total_median_ms']:.3f} ms, "
          f"{direct.numbers['load32']['rps']:.0f} req/s at 32 connections, stream TTFC "
          f"{direct.numbers['ttfc_ms']:.3f} ms, [DONE] {direct.numbers['done_ms']:.3f} ms; "
          f"ScaiGrid's own x-scaigrid-overhead-ms header: median {n['own_overhead_header_ms']:.3f} ms")
    print("added latency: each request's total minus the direct median of the same run (p99 likewise); overheads:"
          " the gateway's median minus the direct median\n(a) ([DONE] overhead - TTFC overhead) / 20: the 19 content"
          " chunks after the first and the usage chunk\n(b) utime+stime of the side's process tree (/proc) over"
          " the wrk run's wall time; wrk, the upstream and this script share the same cores\n(c) RabbitMQ, Redis"
          " and PostgreSQL processes (machine-wide: anything else using them counts too)\n(d) the tree's CPU from"
          " the start of the run until it is idle again (ScaiGrid's ledger drains after the load) / requests\n(e) /proc/stat"
          f" over the run, of {os.cpu_count()} cores: all that ran (this machine is shared; load average now "
          f"{os.getloadavg()[0]:.1f})")


def report_tracing(off: Side, on: Side, receiver: str) -> None:
    """Traces on against off, same rounds: ratios of the traced side's numbers to the untraced one's."""
    rows = [("sequential added latency, median ms", "added_median_ms", 1.2),
            ("sequential added latency, p99 ms", "added_p99_ms", None),
            ("own x-scaigrid-overhead-ms, median", "own_overhead_header_ms", None),
            ("req/s at 32 connections", "load32.rps", None),
            ("CPU ms per request at 32", "load32.cpu_ms_per_request", None),
            ("stream TTFC overhead, median ms", "ttfc_overhead_ms", None),
            ("stream [DONE] overhead, median ms", "done_overhead_ms", None)]

    def get(side, key):
        value = side.numbers
        for part in key.split("."):
            value = value.get(part, {}) if isinstance(value, dict) else {}
        return value if isinstance(value, (int, float)) else float("nan")

    head = f"{'traces':<38}{'off':>11}{'on':>11}{'on/off':>8}  target"
    print("\n" + head + "\n" + "-" * len(head))
    for label, key, limit in rows:
        ratio = get(on, key) / get(off, key) if get(off, key) else float("nan")
        verdict = "" if limit is None else f"<= {limit}x  " + ("met" if ratio <= limit else "NOT met")
        print(f"{label:<38}{get(off, key):11.3f}{get(on, key):11.3f}{ratio:8.2f}  {verdict}")
    try:
        got = httpx.get(receiver + "/", timeout=5).json()
        print(f"the receiver decoded {got['spans']} spans in {got['requests']} exports")
    except httpx.HTTPError as e:
        print(f"the receiver did not answer: {e}")
    try:  # what the traced side could not hand to its exporters (a full queue): the price of a saturated host
        lines = httpx.get(on.base_url + "/metrics", timeout=5).text.splitlines()
        dropped = {line.split('reason="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1]) for line in lines
                   if line.startswith("scaigrid_trace_spans_dropped_total{")}
        print(f"spans dropped by the traced side: {dropped or 'none'}")
    except (httpx.HTTPError, IndexError, ValueError) as e:
        print(f"the traced side's /metrics did not say what it dropped: {e}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="sequential non-streamed requests per side")
    parser.add_argument("--seconds", type=int, default=12, help="each wrk run, at 8 and at 32 connections")
    parser.add_argument("--streams", type=int, default=150, help="sequential streams per side")
    parser.add_argument("--skip-litellm", action="store_true", help="ScaiGrid only (no ratios)")
    parser.add_argument("--tracing", action="store_true", help="also ScaiGrid with traces on: what they cost")
    parser.add_argument("--json", type=Path, help="write the numbers to this file")
    args = parser.parse_args()
    for sig in (signal.SIGINT, signal.SIGTERM):  # both clean up as Ctrl-C does (also when started in background)
        signal.signal(sig, signal.default_int_handler)
    began = time.monotonic()
    if shutil.which("wrk") is None:
        print("installing wrk (apt-get) ...", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, stdout=subprocess.DEVNULL)
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-gateway-")))
        port = free_port()
        upstream = start(stack, [sys.executable, str(HERE / "fake_upstream.py"), str(port)], tmp / "upstream.log")
        direct = Side("direct", f"http://127.0.0.1:{port}", None, "fake", upstream.pid)
        try:
            wait_http(f"{direct.base_url}/", upstream, "the fake upstream", 30)
            sides = [start_scaigrid(stack, f"{direct.base_url}/v1", tmp)]
            if args.tracing:
                receiver = start_receiver(stack, tmp)
                sides.append(start_scaigrid(stack, f"{direct.base_url}/v1", tmp, "ScaiGrid traced",
                                            {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver}))
            if not args.skip_litellm:
                sides.append(start_litellm(stack, f"{direct.base_url}/v1", tmp))
        except Exception as e:  # noqa: BLE001 -- a side that does not start ends the bench, whatever raised
            print(f"\na side failed to start: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
        numbers = measure(sides, direct, args, tmp)
        litellm = next((s for s in sides if s.name.startswith("LiteLLM")), None)
        report(sides[0], litellm, direct)
        if args.tracing:
            report_tracing(sides[0], sides[1], receiver)
        errors = sum(s.errors for s in sides) + direct.errors
        if errors and sides[0].errors:
            print("\nlast lines of ScaiGrid's log:\n" + "\n".join(sides[0].log.read_text().splitlines()[-20:]))
        print(f"\nwhole run {time.monotonic() - began:.0f} s; {errors} errors")
        if args.json:
            args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "sides": numbers,
                                             "seconds": time.monotonic() - began}, indent=2))
    return 1 if errors else 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: everything it started was stopped", file=sys.stderr)
        raise SystemExit(130)
