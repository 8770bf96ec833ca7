"""The ledger through faults, on the real stores: PostgreSQL cut under a running graph (a TCP proxy between them;
the shared server keeps running), and a poison envelope dead-lettered, listed, fixed and replayed."""
import concurrent.futures as cf
import os
import subprocess
import threading
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg2
import psycopg2.errors
import pytest
import redis
import sqlalchemy.exc
from kombu import Connection
from prometheus_client.parser import text_string_to_metric_families

from conftest import bootstrap_key, launch
from scaigrid.runtime import dead_letters
from scaigrid.runtime.batch import ENVELOPES_HEADER, first_line, store_outage
from scaigrid.runtime.faults import TcpProxy
from scaigrid.runtime.service import after_queue
from scaigrid.runtime.testing import SCAIGRID
from test_accounting import meter, new_tenant

# how long PostgreSQL stays cut: 10 s keeps CI short; the drill is 30 s (SCAIGRID_TEST_OUTAGE_SECONDS=30)
OUTAGE_S = float(os.environ.get("SCAIGRID_TEST_OUTAGE_SECONDS", "10"))
QUEUE = after_queue("accounting.record")


def through(url: str, port: int) -> str:
    """The database URL with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))


@pytest.fixture(scope="module")
def faulty(database_url, tmp_path_factory):
    """tests/graphs/ledger_faults.yaml with PostgreSQL behind a TcpProxy (`.proxy`); the test reads directly."""
    admin_key = bootstrap_key(database_url)
    target = urlsplit(database_url)
    proxy = TcpProxy((target.hostname, target.port or 5432))
    try:
        graph = launch("ledger_faults.yaml", tmp_path_factory.mktemp("ledger_faults"),
                       env={"SCAIGRID_DATABASE_URL": through(database_url, proxy.port)})
    except Exception:
        proxy.close()
        raise
    graph.database_url, graph.proxy = database_url, proxy
    graph.admin = {"Authorization": f"Bearer {admin_key}"}
    yield graph
    graph.stop()
    proxy.close()


def gauges(graph) -> dict[tuple[str, str], float]:
    """(metric, queue label) -> value, from the gateway's /metrics (every replica of the graph)."""
    text = httpx.get(graph.base_url + "/metrics", timeout=5).text
    return {(s.name, s.labels.get("queue", "")): s.value for family in text_string_to_metric_families(text)
            for s in family.samples if "queue" in s.labels}


def ledger_of(graph, key_id: str) -> tuple[list[str], int, int, int]:
    """(request ids in the ledger, their cost, requests in the rollup, cost in the rollup) of one key."""
    with psycopg2.connect(graph.database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT request_id, cost_micros FROM usage_ledger WHERE key_id = %s", (key_id,))
        rows = cur.fetchall()
        cur.execute("SELECT coalesce(sum(requests), 0), coalesce(sum(cost_micros), 0) FROM usage_daily "
                    "WHERE key_id = %s", (key_id,))
        rolled, spent = cur.fetchone()
    return [r[0] for r in rows], sum(r[1] for r in rows), int(rolled), int(spent)


def dead_letter_count(graph) -> int:
    with Connection(graph.env["SCAIGRID_AMQP_URI"]) as conn:
        return dead_letters.count(conn)


def scaigrid(graph, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SCAIGRID, *args], env=graph.env, capture_output=True, text=True, timeout=60)


def eventually(check, timeout: float = 30, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(every)


def _wrapped(orig: Exception, **kw) -> Exception:
    """A driver error as SQLAlchemy hands it on."""
    return sqlalchemy.exc.DBAPIError.instance("INSERT INTO usage_ledger …", {}, orig, psycopg2.Error, **kw)


@pytest.mark.parametrize("error, store", [
    (psycopg2.OperationalError("server closed the connection unexpectedly"), "postgres"),
    (psycopg2.errors.AdminShutdown("terminating connection due to administrator command"), "postgres"),
    (psycopg2.errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction"), "postgres"),
    (psycopg2.InterfaceError("connection already closed"), "postgres"),
    (_wrapped(psycopg2.OperationalError("could not connect")), "postgres"),
    (_wrapped(psycopg2.errors.ReadOnlySqlTransaction("read-only")), "postgres"),
    (_wrapped(psycopg2.DatabaseError("SSL SYSCALL error: EOF detected"), connection_invalidated=True), "postgres"),
    (redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."), "redis"),
    (redis.TimeoutError("Timeout reading from socket"), "redis"),
    (ConnectionRefusedError(111, "Connection refused"), "network"),
    (TimeoutError("timed out"), "network"),
    (psycopg2.errors.UniqueViolation("duplicate key"), None),
    (_wrapped(psycopg2.errors.StringDataRightTruncation("value too long for type character varying(64)")), None),
    (ValueError("invalid literal for int() with base 10: 'lots'"), None),
    (KeyError("route"), None),
])
def test_an_outage_is_told_from_a_poison_envelope(error, store):
    assert store_outage(error) == store


def test_logged_errors_carry_no_credentials():
    error = psycopg2.OperationalError('connection to "postgresql://ledger:s3cret@db:5432/x" failed: password=s3cret')
    assert "s3cret" not in first_line(error) and "ledger" not in first_line(error)


def test_the_proxy_refuses_resets_and_restores(database_url):
    with TcpProxy(("127.0.0.1", urlsplit(database_url).port or 5432)) as proxy:
        conn = psycopg2.connect(through(database_url, proxy.port))
        conn.cursor().execute("SELECT 1")
        proxy.cut()
        with pytest.raises(psycopg2.OperationalError):  # the open connection is reset
            conn.cursor().execute("SELECT 1")
        with pytest.raises(psycopg2.OperationalError, match="refused"):
            psycopg2.connect(through(database_url, proxy.port), connect_timeout=3)
        proxy.restore()
        with psycopg2.connect(through(database_url, proxy.port)) as again, again.cursor() as cur:
            cur.execute("SELECT 2")
            assert cur.fetchone() == (2,)


@pytest.mark.chaos
@pytest.mark.slow
def test_postgres_outage_delays_the_ledger_and_loses_nothing(faulty):
    who = new_tenant(faulty, "outage")
    assert meter(faulty, who).status_code == 200  # from here the key is cached: serving needs no PostgreSQL
    answers, stop = [], threading.Event()

    def traffic():
        while not stop.is_set():
            r = meter(faulty, who)
            answers.append((r.status_code, r.headers.get("x-request-id")))
            time.sleep(0.02)

    seen = {"waiting": 0.0, "age": 0.0, "depth": 0.0}
    with cf.ThreadPoolExecutor(4) as pool:
        for _ in range(4):
            pool.submit(traffic)
        time.sleep(1.5)
        faulty.proxy.cut()
        cut_at = time.monotonic()
        while time.monotonic() - cut_at < OUTAGE_S:  # the lag is visible while PostgreSQL is away
            now = gauges(faulty)
            seen["waiting"] = max(seen["waiting"], now.get(("scaigrid_after_waiting", QUEUE.name), 0))
            seen["age"] = max(seen["age"], now.get(("scaigrid_after_oldest_age_seconds", QUEUE.name), 0))
            seen["depth"] = max(seen["depth"], now.get(("scaigrid_after_queue_depth", QUEUE.name), 0))
            time.sleep(0.5)
        faulty.proxy.restore()
        time.sleep(1.5)
        stop.set()
    assert len(answers) > 20 and {status for status, _ in answers} == {200}, answers[:5]
    assert seen["waiting"] == 1 and seen["age"] >= 1 and seen["depth"] >= 1, seen

    ids = {rid for _, rid in answers}
    expect = len(ids) + 1  # and the first request
    assert eventually(lambda: len(ledger_of(faulty, who["key"]["id"])[0]) >= expect, timeout=60)
    time.sleep(1)  # nothing more may trickle in
    recorded, cost, rolled, spent = ledger_of(faulty, who["key"]["id"])
    assert len(recorded) == len(set(recorded)) == expect and ids <= set(recorded)
    assert rolled == expect and spent == cost
    assert dead_letter_count(faulty) == 0

    batch_lines = [d for d in faulty.log_lines() if d.get("logger") == "scaigrid.batch"]
    waiting = [d for d in batch_lines if d["msg"].startswith("store unreachable")]
    resumed = [d for d in batch_lines if d["msg"].startswith("store back")]
    assert len(waiting) == 1 and len(resumed) == 1, batch_lines
    assert waiting[0]["level"] == "warning" and waiting[0]["store"] == "postgres" and waiting[0]["error"]
    assert OUTAGE_S - 2 <= resumed[0]["waited_s"] <= OUTAGE_S + 20
    # neither nameko's traceback nor a step line per failed retry: the two lines above say it all
    assert not [d for d in faulty.log_lines() if d.get("step") == "accounting.record"
                and ("error handling worker" in d["msg"] or d["msg"] == "step raised")]
    assert eventually(lambda: gauges(faulty).get(("scaigrid_after_waiting", QUEUE.name)) == 0, timeout=10)


@pytest.mark.slow
def test_a_poison_envelope_is_listed_fixed_and_replayed_once(faulty):
    who = new_tenant(faulty, "poison")
    rid = f"req_{uuid.uuid4().hex}"
    # a route name longer than usage_ledger.route (varchar(64)): PostgreSQL refuses it, every time
    poison = {"id": rid, "route": "r" * 100, "request": {"model": "metered"}, "context": {},
              "principal": {"key_id": who["key"]["id"], "tenant_id": who["tenant"]["id"]},
              "usage": {"prompt_tokens": 3, "completion_tokens": 4}, "error": None}
    good = [{**poison, "id": f"req_{uuid.uuid4().hex}", "route": "chat"} for _ in range(2)]
    with Connection(faulty.env["SCAIGRID_AMQP_URI"]) as conn:
        producer = conn.Producer(serializer="msgpack")
        # delivered twice, as a publisher's retry can (still one ledger row in the end): alone, and inside a
        # message of several envelopes between two good ones, as a spool round sends them (runtime/after.py)
        producer.publish(poison, exchange=QUEUE.exchange, routing_key=QUEUE.routing_key, delivery_mode=2,
                         declare=[QUEUE])
        producer.publish([good[0], poison, good[1]], exchange=QUEUE.exchange, routing_key=QUEUE.routing_key,
                         delivery_mode=2, declare=[QUEUE], headers={ENVELOPES_HEADER: 3})
    assert eventually(lambda: dead_letter_count(faulty) == 2)
    assert eventually(lambda: set(ledger_of(faulty, who["key"]["id"])[0]) == {g["id"] for g in good})
    assert meter(faulty, who).status_code == 200  # the queue goes on past it

    listed = scaigrid(faulty, "ledger", "dead-letters")
    assert listed.returncode == 0, listed.stderr
    lines = [line for line in listed.stdout.splitlines() if rid in line]
    assert len(lines) == 2 and all(QUEUE.name in line and "value too long" in line for line in lines), listed.stdout
    assert dead_letter_count(faulty) == 2  # listing consumed nothing
    assert eventually(lambda: gauges(faulty).get(("scaigrid_dead_letters", "scaigrid.dead-letter")) == 2)

    with psycopg2.connect(faulty.database_url) as conn, conn.cursor() as cur:  # the operator's fix
        cur.execute("ALTER TABLE usage_ledger ALTER COLUMN route TYPE varchar(200)")
    replayed = scaigrid(faulty, "ledger", "replay", "--request-id", rid)
    assert replayed.returncode == 0 and "replayed 2" in replayed.stdout, (replayed.stdout, replayed.stderr)

    def rows_of_rid():
        with psycopg2.connect(faulty.database_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM usage_ledger WHERE request_id = %s", (rid,))
            return cur.fetchone()[0]

    assert eventually(lambda: rows_of_rid() == 1)
    again = scaigrid(faulty, "ledger", "replay", "--all")
    assert again.returncode == 0 and "replayed 0" in again.stdout, again.stdout
    time.sleep(1)
    assert rows_of_rid() == 1 and dead_letter_count(faulty) == 0
    recorded, cost, rolled, spent = ledger_of(faulty, who["key"]["id"])
    # the replayed row, the two good envelopes beside it and the meter request, each rolled up once
    assert len(recorded) == rolled == 4 and spent == cost
    assert eventually(lambda: gauges(faulty).get(("scaigrid_dead_letters", "scaigrid.dead-letter")) == 0)
