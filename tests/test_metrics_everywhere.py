"""Every function of a running graph serves its own /metrics: the shipped graph.yaml run as Kubernetes and compose
run it, one `scaigrid run NAME` supervisor per function, each with a multiprocess folder of its own (a pod's), the
gateway on its HTTP port and every other function on its supervisor's metrics port. A streamed chat on the local
model and its after-step (the ledger) must show up where they happened, and only there."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from scaigrid.runtime.graph import load_graph
from scaigrid.runtime.testing import SCAIGRID, Vhost, bootstrap_key, free_port, throwaway_database

REPO = Path(__file__).resolve().parent.parent
GRAPH = REPO / "graph.yaml"
MIXED = REPO / "tests" / "graphs" / "mixed.yaml"
CHAT = "smollm2-135m-instruct"


class FunctionSupervisors:
    """`scaigrid run NAME` for every function of the graph that has replicas, each in its own session."""

    def __init__(self, graph: Path, tmp: Path, database_url: str):
        self.vhost = Vhost()
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "SCAIGRID_AMQP_URI": self.vhost.uri, "SCAIGRID_DATABASE_URL": database_url,
               "SCAIGRID_HTTP_ADDRESS": f"127.0.0.1:{self.port}", "SCAIGRID_GRACE_SECONDS": "5",
               "SCAIGRID_SPOOL_DIR": str(tmp / "spool")}
        self.functions = {n: f.replicas for n, f in load_graph(graph).functions.items() if f.replicas}
        self.metrics_url, self.procs, self.logs = {}, {}, {}
        for name in sorted(self.functions):
            address = f"127.0.0.1:{free_port()}"
            self.metrics_url[name] = self.base_url + "/metrics" if name == "gateway" else f"http://{address}/metrics"
            self.logs[name] = tmp / f"{name}.log"
            self.procs[name] = subprocess.Popen(
                [*SCAIGRID, "run", name, "--graph", str(graph)], start_new_session=True,
                env={**env, "PROMETHEUS_MULTIPROC_DIR": str(tmp / f"metrics-{name}"),
                     "SCAIGRID_METRICS_ADDRESS": address},
                stdout=self.logs[name].open("w"), stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        pending = set(self.functions)
        while pending and time.monotonic() < deadline:
            for name in sorted(pending):
                if self.procs[name].poll() is not None:
                    raise RuntimeError(f"scaigrid run {name} exited:\n{self.logs[name].read_text()[-3000:]}")
                try:
                    if name == "gateway":
                        ok = httpx.get(self.base_url + "/readyz", timeout=2).status_code == 200
                    else:
                        ok = "scaigrid_build_info" in self.scrape(name)  # a replica has started writing
                except httpx.HTTPError:
                    ok = False
                if ok:
                    pending.discard(name)
            time.sleep(0.5)
        if pending:
            raise TimeoutError(f"not ready in {timeout}s: {sorted(pending)}")

    def scrape(self, name: str) -> str:
        return httpx.get(self.metrics_url[name], timeout=5).text

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.vhost.delete()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, parsed the way Prometheus reads the exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, name: str, **labels) -> float | None:
    """The sum of the samples of `name` whose labels include `labels`, None when there is none."""
    found = [v for (n, ls), v in samples(text).items() if n == name and labels.items() <= dict(ls).items()]
    return sum(found) if found else None


def until(check, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    subprocess.run([*SCAIGRID, "models", "prepare"], check=True, timeout=3600)
    with throwaway_database() as database_url:
        admin = {"Authorization": f"Bearer {bootstrap_key(database_url)}"}
        grid = FunctionSupervisors(GRAPH, tmp_path_factory.mktemp("everywhere"), database_url)
        try:
            grid.wait_ready()
            tenant = httpx.post(grid.base_url + "/api/v1/tenants", json={"name": "scraped"}, headers=admin).json()
            key = httpx.post(f"{grid.base_url}/api/v1/tenants/{tenant['id']}/keys", json={"name": "k"},
                             headers=admin).json()
            grid.headers = {"Authorization": f"Bearer {key['key']}"}
            yield grid
        finally:
            grid.stop()


def test_every_function_serves_its_own_metrics_after_a_stream_and_its_ledger_record(grid):
    body = {"model": CHAT, "messages": [{"role": "user", "content": "Name three colours."}], "max_tokens": 8,
            "temperature": 0, "stream": True}
    answer = httpx.post(grid.base_url + "/v1/chat/completions", json=body, headers=grid.headers, timeout=120)
    assert answer.status_code == 200 and answer.text.rstrip().endswith("data: [DONE]"), answer.text[-500:]

    # accounting: the after-step recorded the request in its own replica (a batch worker), which its port shows
    accounting = until(lambda: (t := grid.scrape("accounting")) and
                       value(t, "scaigrid_tokens_total", model=CHAT, kind="completion") and t)
    assert accounting, "the ledger's token counter never reached the accounting function's /metrics"
    assert 0 < value(accounting, "scaigrid_tokens_total", model=CHAT, kind="completion") <= 8
    assert value(accounting, "scaigrid_spend_micros_total", model=CHAT) is not None
    assert value(accounting, "scaigrid_function_seconds_count", function="accounting", method="record",
                 outcome="ok") >= 1

    # inference: the local model ran in its replica (the gateway's inline copy hands local models on)
    inference = grid.scrape("inference")
    assert value(inference, "scaigrid_ttft_seconds_count", model=CHAT) == 1
    assert value(inference, "scaigrid_output_tokens_per_second_count", model=CHAT) == 1
    assert value(inference, "scaigrid_generations_in_flight", model=CHAT) == 0
    assert value(inference, "scaigrid_function_seconds_count", function="inference", method="chat",
                 outcome="ok") == 1

    # the gateway: its own requests; the series of the others are theirs, not served twice
    gateway = grid.scrape("gateway")
    assert value(gateway, "scaigrid_request_seconds_count", route="chat", status="200") == 1
    assert value(gateway, "scaigrid_tokens_total") is None and value(gateway, "scaigrid_ttft_seconds_count") is None
    assert value(accounting, "scaigrid_request_seconds_count") is None

    for name, replicas in grid.functions.items():
        text = grid.scrape(name)
        assert value(text, "scaigrid_build_info") == 1, name
        assert value(text, "scaigrid_in_flight", function=name) is not None, name
        assert value(text, "scaigrid_worker_capacity", function=name) == replicas * load_graph(GRAPH).functions[
            name].pool, name
        # its own, and those of the inline-only functions it hosts (they have no replicas to count them)
        hosted = ({f for f, spec in load_graph(GRAPH).functions.items() if not spec.replicas}
                  if name == "gateway" else set())
        others = {dict(ls).get("function") for (n, ls), _ in samples(text).items() if n == "scaigrid_in_flight"}
        assert others == {name} | hosted, f"{name}'s /metrics shows the in-flight calls of {others}"


def test_each_supervisor_reports_its_rpc_queue_depth(grid):
    """Polled before any replica starts, so every function has the series (the gateway: no RPC queue, 0)."""
    for name in grid.functions:
        text = grid.scrape(name)
        assert value(text, "scaigrid_queue_depth", function=name) == 0, name  # nothing waits in an idle graph
        shown = {dict(ls)["function"] for (n, ls), _ in samples(text).items() if n == "scaigrid_queue_depth"}
        assert shown == {name}, f"{name}'s /metrics shows the queues of {shown}"


def test_a_taken_metrics_port_is_one_line_and_the_function_still_runs(grid, tmp_path):
    """A second `scaigrid run system` on the first one's metrics port: it warns once, naming the port, and serves."""
    taken = grid.metrics_url["system"].split("//")[1].split("/")[0]
    log = tmp_path / "second.log"
    env = {**os.environ, "SCAIGRID_AMQP_URI": grid.vhost.uri, "SCAIGRID_METRICS_ADDRESS": taken,
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"), "SCAIGRID_SPOOL_DIR": str(tmp_path / "spool")}
    proc = subprocess.Popen([*SCAIGRID, "run", "system", "--graph", str(GRAPH)], env=env, start_new_session=True,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        assert until(lambda: "replica started" in log.read_text() and '"msg": "metrics port unavailable' in
                     log.read_text(), 60), log.read_text()[-2000:]
        time.sleep(6)  # past SERVED_AFTER: the replica runs on, nothing restarts
        lines = [line for line in log.read_text().splitlines() if "metrics port unavailable" in line]
        assert len(lines) == 1 and taken in lines[0]
        spawned = [line for line in log.read_text().splitlines()
                   if '"logger": "scaigrid.supervisor"' in line and '"msg": "replica started"' in line]
        assert proc.poll() is None and len(spawned) == 1  # started once, never restarted
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


def test_the_queue_watch_reads_what_waits_in_a_real_queue():
    from kombu import Connection

    from scaigrid.runtime.metrics import QUEUE_DEPTH
    from scaigrid.runtime.queue_watch import QueueWatch

    vhost = Vhost()
    said = []
    try:
        with Connection(vhost.uri) as conn:
            channel = conn.channel()
            channel.queue_declare("rpc-probe", durable=True, auto_delete=False)
            producer = conn.Producer(channel=channel)
            for i in range(3):
                producer.publish({"n": i}, routing_key="rpc-probe")
        watch = QueueWatch(vhost.uri, ["probe", "absent"], lambda *a, **kw: said.append(a), every=0.2)
        watch.start()
        try:
            assert until(lambda: QUEUE_DEPTH.labels("probe")._value.get() == 3, 10)
            assert QUEUE_DEPTH.labels("absent")._value.get() == 0  # never declared: nothing waits there
        finally:
            watch.stop()
    finally:
        vhost.delete()
    assert not said  # the broker answered: nothing to say


def test_a_replica_without_a_supervisor_serves_its_own_metrics(tmp_path):
    """systemd's way (`python -m scaigrid.runtime.worker ... --metrics HOST:BASE`): replica 2 serves at BASE + 2,
    and the live gauges an earlier run of the same unit left in its folder no longer count."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    (folder / "gauge_livesum_999999.db").write_bytes(b"stale")  # a predecessor that died without a supervisor
    base = free_port() - 2  # replica 2's port is one the system just handed out as free
    vhost = Vhost()
    env = {**os.environ, "SCAIGRID_AMQP_URI": vhost.uri, "PROMETHEUS_MULTIPROC_DIR": str(folder),
           "SCAIGRID_SPOOL_DIR": str(tmp_path / "spool"), "SCAIGRID_HEARTBEAT_DIR": str(tmp_path)}
    log = tmp_path / "worker.log"
    proc = subprocess.Popen([sys.executable, "-m", "scaigrid.runtime.worker", "--graph", str(MIXED), "--function",
                             "shout", "--replica", "2", "--metrics", f"127.0.0.1:{base}"], env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        def scraped():
            try:
                return httpx.get(f"http://127.0.0.1:{base + 2}/metrics", timeout=2).text
            except httpx.HTTPError:
                return None

        text = until(lambda: (t := scraped()) and "scaigrid_worker_capacity" in t and t, 60)
        assert text, log.read_text()[-2000:]
        assert value(text, "scaigrid_build_info") == 1
        assert value(text, "scaigrid_worker_capacity", function="shout") == load_graph(MIXED).functions["shout"].pool
        assert not (folder / "gauge_livesum_999999.db").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        vhost.delete()
