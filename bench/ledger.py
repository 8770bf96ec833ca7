"""The usage ledger: ingestion records/s through the real event path, and report query time at 1M and 10M rows.

Ingestion: N usage events (persistent msgpack envelopes on the accounting.record after-step queue, exactly as the
gateway publishes them) wait while the consumer is down; then `scaigrid run accounting` starts and the clock runs
until the ledger holds all N (batches: Redis reconciliation + INSERT + rollup upsert + COMMIT, then ack).

Reports: the ledger is filled with generated rows (SQL generate_series), the daily rollup rebuilt from it, and the
usage API's queries timed on the rollup, side by side with the same query on the raw ledger.
Targets: >= 5,000 records/s; reports < 50 ms at 10M rows.
Usage: python bench/ledger.py [--records N] [--rows 1000000,10000000]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

import psycopg2
from kombu import Connection

from scaigrid.adapters.sql.engine import engine_for
from scaigrid.adapters.sql.ledger import LedgerRepository
from scaigrid.adapters.sql.migrate import upgrade
from scaigrid.runtime.service import after_queue
from scaigrid.runtime.testing import SCAIGRID, Vhost

PG_ADMIN = os.environ.get("SCAIGRID_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
GRAPH = Path(__file__).resolve().parents[1] / "graph.yaml"  # its chat routes hand accounting.record the envelopes


def envelope(i: int, tenants: list[str], keys: list[str]) -> dict:
    t = i % len(tenants)
    return {"version": 1, "id": f"req_bench_{uuid.uuid4().hex}", "route": "chat", "tenant": tenants[t],
            "principal": {"key_id": keys[t], "tenant_id": tenants[t], "tenant_name": f"t{t}", "role": "member",
                          "models": None},
            "request": {"model": "smollm2-135m-instruct", "body": {"messages": [{"role": "user", "content": "hi"}]}},
            "context": {"route_ms": 12.5, "accounting": {"day": time.strftime("%Y%m%d"),
                                                          "month": time.strftime("%Y%m"), "tokens": 300, "cost": 0}},
            "response": None, "usage": {"prompt_tokens": 20 + i % 50, "completion_tokens": 100 + i % 200},
            "timings": {}, "error": None, "done": False}


def ingestion(db_url: str, records: int) -> float:
    vhost = Vhost()
    env = {**os.environ, "SCAIGRID_AMQP_URI": vhost.uri, "SCAIGRID_DATABASE_URL": db_url,
           "SCAIGRID_LOG_LEVEL": "WARNING", "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp()}
    tenants = [str(uuid.uuid4()) for _ in range(20)]
    keys = [str(uuid.uuid4()) for _ in range(20)]
    queue = after_queue("accounting.record")
    try:
        with Connection(vhost.uri) as conn:
            producer = conn.Producer(serializer="msgpack")
            producer.declare = [queue]
            queue(conn.channel()).declare()
            for i in range(records):
                producer.publish(envelope(i, tenants, keys), exchange=queue.exchange, routing_key=queue.routing_key,
                                 delivery_mode=2)
        repo = LedgerRepository(engine_for(db_url))
        before = repo.count()
        consumer = subprocess.Popen([*SCAIGRID, "run", "accounting", "--graph", str(GRAPH)], env=env)
        try:
            while repo.count() == before:  # start-up (imports, connections) is not ingestion
                time.sleep(0.005)
            started, first = time.perf_counter(), repo.count() - before
            while repo.count() - before < records:
                time.sleep(0.01)
            return (records - first) / (time.perf_counter() - started)
        finally:
            consumer.terminate()
            consumer.wait()
    finally:
        vhost.delete()


FILL = """
INSERT INTO usage_ledger (request_id, at, tenant_id, key_id, route, model, prompt_tokens, completion_tokens,
                          cost_micros, latency_ms, status, error_code)
SELECT 'gen_' || g, now() - (g %% 90) * interval '1 day' - (g %% 86400) * interval '1 second',
       ('00000000-0000-0000-0000-' || lpad((g %% 100)::text, 12, '0'))::uuid,
       ('00000000-0000-0000-0001-' || lpad((g %% 1000)::text, 12, '0'))::uuid,
       'chat', (ARRAY['smollm2-135m-instruct', 'all-minilm-l6-v2', 'gpt-4o'])[1 + g %% 3],
       20 + g %% 500, 50 + g %% 900, 10 + g %% 5000, 100.0, CASE WHEN g %% 97 = 0 THEN 500 ELSE 200 END, NULL
FROM generate_series(%(lo)s, %(hi)s - 1) g
"""
ROLLUP = """
TRUNCATE usage_daily;
INSERT INTO usage_daily (day, tenant_id, key_id, model, requests, errors, prompt_tokens, completion_tokens, cost_micros)
SELECT date_trunc('day', at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', tenant_id, key_id, model, count(*),
       count(*) FILTER (WHERE status >= 400), sum(prompt_tokens), sum(completion_tokens), sum(cost_micros)
FROM usage_ledger GROUP BY 1, 2, 3, 4;
ANALYZE usage_daily; ANALYZE usage_ledger;
"""
RAW = """SELECT model, date_trunc('day', at) AS day, count(*), sum(prompt_tokens), sum(completion_tokens),
                sum(cost_micros) FROM usage_ledger WHERE tenant_id = %s AND at >= %s AND at < %s GROUP BY 1, 2"""


def timed(fn, runs: int = 15) -> float:
    fn()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def reports(db_url: str, sizes: list[int]) -> list[tuple]:
    repo = LedgerRepository(engine_for(db_url))
    tenant = "00000000-0000-0000-0000-000000000007"
    key = "00000000-0000-0000-0001-000000000007"
    end = date.today()
    start = end - timedelta(days=30)
    out, filled = [], 0
    conn = psycopg2.connect(db_url)  # not `with conn:`: psycopg2 2.9 opens a transaction there even in autocommit
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("ALTER TABLE usage_ledger DISABLE TRIGGER usage_ledger_append_only")  # generated rows only
        for size in sizes:
            for lo in range(filled, size, 1_000_000):
                cur.execute(FILL, {"lo": lo, "hi": min(size, lo + 1_000_000)})
                print(f"  ledger rows: {min(size, lo + 1_000_000):,}", flush=True)
            filled = size
            cur.execute(ROLLUP)
            row = [size,
                   timed(lambda: repo.report(["model", "day"], start, end, tenant_id=tenant)),
                   timed(lambda: repo.report(["tenant"], start, end)),
                   timed(lambda: repo.report(["day"], start, end, key_id=key)),
                   timed(lambda: cur.execute(RAW, (tenant, start, end + timedelta(days=1))) or cur.fetchall(), 3)]
            out.append(row)
    conn.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=30_000)
    parser.add_argument("--rows", default="1000000,10000000")
    args = parser.parse_args()
    db = f"sg_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(PG_ADMIN)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{db}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + db
    try:
        upgrade(url)
        rate = ingestion(url, args.records)
        print(f"\ningestion through the event path: {rate:,.0f} records/s ({args.records:,} records; "
              f"target >= 5,000) {'OK' if rate >= 5000 else 'MISSED'}")
        with psycopg2.connect(url) as conn:
            conn.autocommit = True
            conn.cursor().execute("ALTER TABLE usage_ledger DISABLE TRIGGER usage_ledger_append_only; "
                                  "TRUNCATE usage_ledger, usage_daily; "
                                  "ALTER TABLE usage_ledger ENABLE TRIGGER usage_ledger_append_only")
        rows = reports(url, [int(s) for s in args.rows.split(",")])
        print(f"\nreport query, median ms      {'tenant by model,day':>20} {'all by tenant':>14} "
              f"{'key by day':>11} {'raw ledger (no rollup)':>23}")
        for size, a, b, c, raw in rows:
            print(f"{size:>12,} ledger rows     {a:20.2f} {b:14.2f} {c:11.2f} {raw:23.2f}")
        worst = max(max(r[1:4]) for r in rows)
        print(f"\ntarget: reports < 50 ms at {rows[-1][0]:,} rows -> worst {worst:.2f} ms "
              f"{'OK' if worst < 50 else 'MISSED'}")
    finally:
        admin.cursor().execute(f'DROP DATABASE "{db}" WITH (FORCE)')


if __name__ == "__main__":
    main()
