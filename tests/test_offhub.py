"""runtime/offhub.py with real child processes, no mocks. The eventlet half runs in a monkey-patched subprocess (as
nameko workers are; this test process stays unpatched, tests/conftest.py), which prints its measurements as JSON;
the plain half (thread mode, as scripts use it) runs here."""
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from scaigrid.adapters.vector.base import CollectionNotFound, DimensionMismatch
from scaigrid.runtime.offhub import OffHubDied, OffHubProcess, OffHubTimeout, OffHubUnavailable

DEMO = str(Path(__file__).parent / "demo_functions")
ROOT = Path(__file__).parent.parent

EVENTLET_SCRIPT = r'''
import eventlet
eventlet.monkey_patch()
import json, os, signal, sys, time
sys.path.insert(0, sys.argv[1])
from scaigrid.adapters.vector.base import CollectionNotFound, DimensionMismatch
from scaigrid.runtime.offhub import OffHubDied, OffHubProcess

TICKERS, PERIOD = 50, 0.01
ticks = []
def ticker():
    while True:
        ticks.append(time.monotonic())
        eventlet.sleep(PERIOD)
for _ in range(TICKERS):
    eventlet.spawn(ticker)
eventlet.sleep(0.2)

def during(fn):
    """Run fn while the tickers tick: how long it took, how many ticks landed meanwhile, the longest silence."""
    t0 = time.monotonic()
    value = fn()
    t1 = time.monotonic()
    inside = sorted(t for t in ticks if t0 <= t <= t1)
    gaps = [b - a for a, b in zip([t0] + inside, inside + [t1])]
    return {"seconds": t1 - t0, "ticks": len(inside), "max_gap": max(gaps), "value": value}

out = {}
hub = OffHubProcess("offhub_demo:Blocking", workers=20)
out["green"] = hub.green
hub.start()
out["child_has_eventlet"] = hub.call("eventlet_loaded")
out["offhub"] = during(lambda: hub.call("block", 1.0))
# the control: the same blocking call made in this process stalls every greenlet
out["in_process"] = during(lambda: eventlet.patcher.original("time").sleep(1.0) or 0)
pool = eventlet.GreenPool()
out["concurrent20"] = during(lambda: len(list(pool.imap(lambda _: hub.call("block", 1.0), range(20)))))

# big frames from many greenlets at once: green pipe writes come in pieces and must not interleave
blobs = [str(i) * 2_000_000 for i in range(10)]
out["big_frames"] = list(pool.imap(lambda b: hub.call("echo", b)["value"] == b, blobs))

errors = {}
for kind, expected in [("value", ValueError), ("missing", CollectionNotFound), ("dimensions", DimensionMismatch)]:
    try:
        hub.call("fail", kind)
    except Exception as exc:
        errors[kind] = [type(exc) is expected, str(exc)]
out["errors"] = errors

victim = hub.pid
in_flight = eventlet.spawn(lambda: hub.call("block", 30))
eventlet.sleep(0.3)
os.kill(victim, signal.SIGKILL)
t0 = time.monotonic()
try:
    in_flight.wait()
    out["killed"] = "no error"
except OffHubDied as exc:
    out["killed"] = str(exc)
out["killed_seconds"] = time.monotonic() - t0
out["after_kill"] = [hub.call("echo", 1)["value"], hub.pid != victim]
last = hub.pid
hub.close()
out["closed"] = [hub.pid, os.path.exists(f"/proc/{last}")]
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def under_eventlet():
    result = subprocess.run([sys.executable, "-c", EVENTLET_SCRIPT, DEMO], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_blocking_call_off_hub_leaves_the_hub_running(under_eventlet):
    off, control = under_eventlet["offhub"], under_eventlet["in_process"]
    assert under_eventlet["green"] is True and under_eventlet["child_has_eventlet"] is False
    assert 0.95 < off["seconds"] < 2.5
    # 50 greenlets ticking every 10 ms: ~5,000 ticks fit in the call; a loaded 2-core box still gives thousands
    assert off["ticks"] > 1000, off
    assert off["max_gap"] < 0.5, off  # a stall would be the whole second
    # the control proves the probe sees a stall: the same 1 s block in-process lets no greenlet run
    assert control["ticks"] == 0 and control["max_gap"] > 0.95, control
    print(f"\noff-hub 1 s call: {off['ticks']} ticks, longest silence {off['max_gap'] * 1000:.0f} ms; "
          f"in-process: {control['ticks']} ticks, silence {control['max_gap'] * 1000:.0f} ms")


def test_concurrent_calls_overlap(under_eventlet):
    run = under_eventlet["concurrent20"]
    assert run["value"] == 20
    assert run["seconds"] < 2.5, run  # ~max (1 s), not ~sum (20 s)
    assert run["max_gap"] < 0.5, run


def test_big_frames_from_many_greenlets_stay_whole(under_eventlet):
    assert under_eventlet["big_frames"] == [True] * 10


def test_error_types_survive_the_trip_under_eventlet(under_eventlet):
    errors = under_eventlet["errors"]
    assert errors["value"] == [True, "k must be an integer from 1 to 1000"]
    assert errors["missing"] == [True, "collection 'docs' does not exist for this tenant"]
    assert errors["dimensions"][0] is True


def test_a_killed_child_fails_its_calls_and_comes_back(under_eventlet):
    assert "was killed by SIGKILL during the call" in under_eventlet["killed"], under_eventlet["killed"]
    assert "\n" not in under_eventlet["killed"]
    assert under_eventlet["killed_seconds"] < 2
    assert under_eventlet["after_kill"] == [1, True]
    assert under_eventlet["closed"] == [None, False]


# plain processes (threads) ---------------------------------------------------------------------------------------

@pytest.fixture
def demo(monkeypatch):
    monkeypatch.syspath_prepend(DEMO)  # the child gets our sys.path, so the target imports there too
    started = []

    def start(*args, kwargs=None, **options) -> OffHubProcess:
        started.append(OffHubProcess("offhub_demo:Blocking", args=args, kwargs=kwargs, **options))
        return started[-1]

    yield start
    for process in started:
        process.close()


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_calls_errors_and_results(demo):
    hub = demo("hi")
    assert hub.green is False
    assert hub.call("echo", [1, 2.5, None], suffix="!") == {"greeting": "hi", "value": [1, 2.5, None], "suffix": "!"}
    with pytest.raises(CollectionNotFound) as missing:
        hub.call("fail", "missing")
    assert missing.value.collection == "docs"  # attributes and message as raised, not formatted twice
    assert str(missing.value) == "collection 'docs' does not exist for this tenant"
    assert "raised in off-hub process" in "\n".join(missing.value.__notes__)
    with pytest.raises(DimensionMismatch):
        hub.call("fail", "dimensions")
    with pytest.raises(KeyError):
        hub.call("fail", "whatever")
    with pytest.raises(RuntimeError, match=r"^offhub_demo\.DemoError: not one of ours\n"):
        hub.call("fail", "foreign")  # not ours: a RuntimeError that names it
    with pytest.raises(TypeError, match="cannot cross the process boundary"):
        hub.call("unportable")
    with pytest.raises(AttributeError, match="no public method"):
        hub.call("_private")
    assert hub.call("echo", 1)["value"] == 1  # the print in the factory did not corrupt the stream


def test_threads_call_concurrently_and_the_pool_is_bounded(demo):
    hub = demo(workers=4)
    hub.start()
    results = []
    t0 = time.monotonic()
    threads = [threading.Thread(target=lambda: results.append(hub.call("block", 0.5))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    assert len(results) == 8
    assert 0.95 < elapsed < 3.0, elapsed  # two waves of four (1 s), not one of eight (0.5 s) nor eight in a row (4 s)
    assert len({round(r - min(results)) for r in results}) == 2


def test_timeout_then_the_child_still_serves(demo):
    hub = demo(timeout=5)
    with pytest.raises(OffHubTimeout, match="gave no answer within 0.2 s"):
        hub.call("block", 1, timeout=0.2)
    assert isinstance(OffHubTimeout("x"), TimeoutError)
    assert hub.call("echo", 2)["value"] == 2


def test_a_child_that_exits_is_restarted_with_backoff(demo):
    hub = demo()
    first = hub.start()
    with pytest.raises(OffHubDied, match=r"exited with code 7 during the call"):
        hub.call("fail", "exit")
    assert hub.call("pid") != first  # the first death restarts at once
    with pytest.raises(OffHubDied):
        hub.call("fail", "exit")
    assert hub.call("echo", 3)["value"] == 3  # an answer resets the count


def test_a_factory_that_fails_raises_its_error_then_backs_off(demo):
    hub = demo(kwargs={"fail": True})
    with pytest.raises(ConnectionRefusedError, match="the store is down"):
        hub.start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the second start may race the first child's exit being seen
        try:
            hub.start()
        except ConnectionRefusedError:
            continue
        except OffHubUnavailable as exc:
            assert "ConnectionRefusedError: the store is down" in str(exc) and "next start in" in str(exc)
            break
    else:
        pytest.fail("repeated start failures must back off")


def test_close_leaves_no_process(demo):
    hub = demo()
    pid = hub.start()
    assert alive(pid)
    hub.close()
    assert not alive(pid) and hub.pid is None
    with pytest.raises(OffHubUnavailable, match="closed"):
        hub.call("echo", 1)


PARENT = r'''
import os, signal, sys, threading, time
sys.path.insert(0, sys.argv[1])
from scaigrid.runtime.offhub import OffHubProcess
hub = OffHubProcess("offhub_demo:Blocking")
print(hub.start(), flush=True)
threading.Thread(target=hub.call, args=("block", 60), daemon=True).start()  # the child is busy in a call
time.sleep(0.3)
os.kill(os.getpid(), signal.SIGKILL)
'''


def test_the_child_exits_when_its_parent_dies():
    parent = subprocess.run([sys.executable, "-c", PARENT, DEMO], capture_output=True, text=True, timeout=60,
                            cwd=ROOT)
    assert parent.returncode == -signal.SIGKILL
    child = int(parent.stdout.split()[0])
    deadline = time.monotonic() + 10
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child), "the child outlived its parent"


def test_grpc_stalls_the_hub_in_process_but_not_off_hub():
    """The reason for all this, shown with grpc itself (weaviate-client's transport): a call waiting in grpc's C core
    freezes every greenlet; the same call off-hub does not."""
    pytest.importorskip("grpc")
    script = r'''
import eventlet
eventlet.monkey_patch()
import json, sys, time
sys.path.insert(0, sys.argv[1])
from offhub_demo import GrpcProbe
from scaigrid.runtime.offhub import OffHubProcess
ticks = []
def ticker():
    while True:
        ticks.append(time.monotonic()); eventlet.sleep(0.01)
for _ in range(10):
    eventlet.spawn(ticker)
eventlet.sleep(0.1)
def count(fn):
    t0 = time.monotonic(); code = fn(); t1 = time.monotonic()
    return [code, sum(t0 <= t <= t1 for t in ticks)]
hub = OffHubProcess("offhub_demo:GrpcProbe", args=("127.0.0.1:1",))
hub.start()
print(json.dumps({"in_process": count(lambda: GrpcProbe("127.0.0.1:1").wait(1.0)),
                  "offhub": count(lambda: hub.call("wait", 1.0))}))
hub.close()
'''
    result = subprocess.run([sys.executable, "-c", script, DEMO], capture_output=True, text=True, timeout=60,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["in_process"] == ["DEADLINE_EXCEEDED", 0]  # 1 s in which no greenlet ran
    assert out["offhub"][0] == "DEADLINE_EXCEEDED" and out["offhub"][1] > 300  # ~10 x 100 ticks

