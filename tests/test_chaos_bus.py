"""The broker goes away under traffic (stop_app/start_app, a full restart), a gateway is SIGKILLed while its usage
is only in its spool, the spool fills up: nothing an answered request owes the ledger is lost or doubled.

Real RabbitMQ (a node of the tests' own, so stopping it takes nothing from other tests), PostgreSQL, Redis.
`pytest -m chaos -s` prints the table of every fault.
"""
import os
import signal
import threading
import time

import httpx
import pytest

from chaos_broker import PrivateBroker
from chaos_report import Tally, report, traffic
from conftest import bootstrap_key, launch

pytestmark = pytest.mark.chaos
ROWS: list = []
BODY = {"model": "metered", "prompt_tokens": 3, "completion_tokens": 4}


@pytest.fixture(scope="module")
def broker():
    node = PrivateBroker()
    yield node
    node.close()


@pytest.fixture(scope="module")
def admin(database_url):
    return {"Authorization": f"Bearer {bootstrap_key(database_url)}"}


@pytest.fixture(scope="module")
def bus(database_url, broker, admin, tmp_path_factory):
    graph = launch("bus.yaml", tmp_path_factory.mktemp("bus"),
                   env={"SCAIGRID_DATABASE_URL": database_url, "SCAIGRID_AMQP_URI": broker.uri})
    graph.database_url = database_url
    tenant = httpx.post(graph.base_url + "/api/v1/tenants", json={"name": "bus"}, headers=admin).json()
    key = httpx.post(f"{graph.base_url}/api/v1/tenants/{tenant['id']}/keys", json={"name": "k"}, headers=admin)
    graph.headers = {"Authorization": f"Bearer {key.json()['key']}"}
    yield graph
    graph.stop()
    print("\n" + report(ROWS))


def until_served(graph, path: str, timeout: float = 60) -> float:
    """Seconds until `path` answers 200 again."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if httpx.post(graph.base_url + path, json=BODY, headers=graph.headers, timeout=5).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{path} not served again within {timeout}s of the broker's return")


@pytest.mark.parametrize("full", [False, True], ids=["stop_app", "full_restart"])
def test_broker_restart_mid_traffic(bus, broker, full):
    tally = Tally(f"broker {'restart' if full else 'stop_app/start_app'} (8 s away)")
    stop = threading.Event()
    threads = traffic(tally, bus.base_url + "/v1/meter", BODY, bus.headers, stop, workers=2)
    threads += traffic(tally, bus.base_url + "/v1/far_meter", BODY, bus.headers, stop, workers=2)
    time.sleep(2)
    broker.stop() if full else broker.stop_app()
    try:
        time.sleep(8)
    finally:
        broker.start() if full else broker.start_app()
    back_in = until_served(bus, "/v1/far_meter")
    time.sleep(2)
    stop.set()
    for t in threads:
        t.join(60)
    counts = tally.ledger(bus.database_url, timeout=90)
    ROWS.append((tally, counts))
    _, lost, doubled = counts
    assert lost == 0 and doubled == 0, report([(tally, counts)])
    assert "hung" not in tally.failed and tally.slowest_s < 31
    # what failed, failed cleanly: in the API's format, with a status that says "retry"
    assert all(k.startswith(("503", "504")) for k in tally.failed), tally.failed
    assert back_in < 20, f"the remote route came back only after {back_in:.1f}s"


def test_a_gateway_killed_with_usage_only_in_its_spool_loses_none(bus, broker):
    tally = Tally("gateway SIGKILL, broker away")
    broker.stop_app()
    try:
        with httpx.Client(headers=bus.headers) as client:  # served inline: no broker needed to answer
            for _ in range(20):
                tally.send(client, bus.base_url + "/v1/meter", BODY)
        assert len(tally.answered) == 20, tally.failed
        for pid in bus.replica_pids("gateway"):
            os.kill(pid, signal.SIGKILL)  # the events exist only in the spool files now
        time.sleep(1)
    finally:
        broker.start_app()
    until_served(bus, "/v1/far_meter", timeout=90)  # the restarted replicas send what the killed ones left
    counts = tally.ledger(bus.database_url, timeout=90)
    ROWS.append((tally, counts))
    assert counts[1:] == (0, 0), report([(tally, counts)])


def test_a_full_spool_refuses_billable_work(database_url, broker, admin, tmp_path):
    graph = launch("bus.yaml", tmp_path, env={"SCAIGRID_DATABASE_URL": database_url, "SCAIGRID_AMQP_URI": broker.uri,
                                              "SCAIGRID_SPOOL_MAX_MB": "0.02"})
    try:
        tenant = httpx.post(graph.base_url + "/api/v1/tenants", json={"name": "full"}, headers=admin).json()
        key = httpx.post(f"{graph.base_url}/api/v1/tenants/{tenant['id']}/keys", json={"name": "k"}, headers=admin)
        headers = {"Authorization": f"Bearer {key.json()['key']}"}
        tally = Tally("spool full (20 KiB), broker away")
        broker.stop_app()
        try:
            with httpx.Client(headers=headers) as client:
                for _ in range(60):
                    tally.send(client, graph.base_url + "/v1/meter", BODY)
        finally:
            broker.start_app()
        assert tally.answered and tally.failed["503 usage_spool_full"] > 0, tally.failed
        graph.headers = headers
        until_served(graph, "/v1/meter", timeout=60)
        counts = tally.ledger(database_url, timeout=90)
        ROWS.append((tally, counts))
        assert counts[1:] == (0, 0), report([(tally, counts)])
    finally:
        graph.stop()
