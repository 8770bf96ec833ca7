"""Abandoned work stops: the shipped graph with the local chat model, its inference timeout cut to 3 s. A request
that times out, or whose client hangs up, stops its generation at once, streamed or not, and the in-flight gauge
on the gateway's /metrics shows it."""
import re
import subprocess
import time
from pathlib import Path

import httpx
import psycopg2
import pytest
import yaml

from conftest import bootstrap_key, launch
from scaigrid.runtime.testing import SCAIGRID

REPO = Path(__file__).resolve().parents[1]
CHAT = "smollm2-135m-instruct"
LONG = {"model": CHAT, "messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
        "max_tokens": 4000, "temperature": 0.8, "seed": 7}


@pytest.fixture(scope="module")
def impatient(database_url, tmp_path_factory):
    subprocess.run([*SCAIGRID, "models", "prepare"], check=True, timeout=3600)
    tmp = tmp_path_factory.mktemp("impatient")
    spec = yaml.safe_load((REPO / "graph.yaml").read_text())
    spec["functions"]["inference"]["timeout"] = 3
    (tmp / "graph.yaml").write_text(yaml.safe_dump(spec))
    key = bootstrap_key(database_url)
    graph = launch(tmp / "graph.yaml", tmp, env={"SCAIGRID_DATABASE_URL": database_url})
    graph.database_url = database_url
    graph.headers = {"Authorization": f"Bearer {key}"}
    yield graph
    graph.stop()


def in_flight(graph) -> float:
    text = httpx.get(graph.base_url + "/metrics").text
    m = re.search(r'^scaigrid_generations_in_flight\{model="%s"\} (\S+)$' % re.escape(CHAT), text, re.M)
    return float(m.group(1)) if m else 0.0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 1/100 s


def assert_idle(graph) -> None:
    """The gauge is back to 0 and the inference replica burns (almost) no CPU."""
    deadline = time.monotonic() + 2
    while in_flight(graph) != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert in_flight(graph) == 0
    (pid,) = graph.replica_pids("inference")
    before = cpu_seconds(pid)
    time.sleep(1)
    assert cpu_seconds(pid) - before < 0.3, "the inference replica is still generating"


def test_a_timed_out_request_stops_its_generation(impatient):
    started = time.monotonic()
    r = httpx.post(impatient.base_url + "/v1/chat/completions", json=LONG, headers=impatient.headers, timeout=30)
    took = time.monotonic() - started
    assert r.status_code == 504, r.text
    assert r.json()["error"]["type"] == "timeout"  # OpenAI's error format
    assert took < 5
    assert_idle(impatient)


def test_a_stream_past_its_timeout_ends_with_an_error_and_stops(impatient):
    with httpx.stream("POST", impatient.base_url + "/v1/chat/completions", json={**LONG, "stream": True},
                      headers=impatient.headers, timeout=30) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert '"content"' in lines[1]
    assert '"error"' in lines[-1] and "step_timeout" in lines[-1]
    assert_idle(impatient)


def test_a_client_that_hangs_up_stops_a_non_streamed_generation(impatient):
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(impatient.base_url + "/v1/chat/completions", json=LONG, headers=impatient.headers, timeout=1.5)
    left = time.monotonic()
    while in_flight(impatient) != 0 and time.monotonic() - left < 2:
        time.sleep(0.05)
    assert time.monotonic() - left < 1.5, "generation went on after the client left"
    assert_idle(impatient)
    # billed for what was made before it stopped: the answer went nowhere, the tokens were still spent
    deadline, rows = time.monotonic() + 10, []
    while not rows and time.monotonic() < deadline:
        with psycopg2.connect(impatient.database_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT completion_tokens FROM usage_ledger WHERE route = 'chat' AND status = 200")
            rows = cur.fetchall()
        time.sleep(0.2)
    assert rows and all(0 < tokens < 4000 for (tokens,) in rows)
