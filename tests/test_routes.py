"""Routes over the real RabbitMQ: remote and inline steps, early answers, typed errors, timeouts, after-steps."""
import re
import time

import httpx
import pytest

from conftest import audit_records


def post(graph, path, body=None, **kw):
    return httpx.post(graph.base_url + path, json=body, timeout=30, **kw)


def metric(graph, name: str, **labels) -> float:
    text = httpx.get(graph.base_url + "/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            got = ",".join(sorted(line[len(name) + 1:line.index("}")].split(",")))
            if got == want:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_multi_step_route_across_inline_and_remote(mixed_graph):
    r = post(mixed_graph, "/pipeline", {"text": "hello"}, headers={"x-request-id": "req-test-multi-1"})
    assert r.status_code == 200, r.text
    # the id is ours; the caller's is echoed as their reference
    assert re.fullmatch(r"req_[0-9a-f]{32}", r.headers["x-request-id"])
    assert r.headers["x-client-request-id"] == "req-test-multi-1"
    body = r.json()
    assert body["text"] == "HELLO"
    (inline_fn, inline_pid), (remote_fn, remote_pid) = [t.split("@") for t in body["trail"]]
    gateway_pids = mixed_graph.replica_pids("gateway")
    assert inline_fn == "tag_inline" and int(inline_pid) in gateway_pids  # ran inside the gateway process
    assert remote_fn == "tag_remote" and int(remote_pid) in mixed_graph.replica_pids("tag_remote")
    # per-step timings travel in the envelope and come back as Server-Timing
    steps = re.findall(r'desc="([^"]+)"', r.headers["server-timing"])
    assert steps == ["gate.check", "tag_inline.add", "tag_remote.add", "shout.upper"]  # `when` unmet: skipped
    assert metric(mixed_graph, "scaigrid_step_seconds_count", route="pipeline", step="tag_inline.add",
                  placement="inline") >= 1
    assert metric(mixed_graph, "scaigrid_step_seconds_count", route="pipeline", step="shout.upper",
                  placement="remote") >= 1


def test_a_step_with_when_runs_only_when_its_path_holds_a_value(mixed_graph):
    for twice, runs in ((True, 2), ({"x": 1}, 2), (False, 1), ([], 1), (None, 1), ("", 1)):
        r = post(mixed_graph, "/pipeline", {"text": "a", "twice": twice})
        assert r.status_code == 200, r.text
        assert len([t for t in r.json()["trail"] if t.startswith("tag_remote@")]) == runs, twice
        steps = re.findall(r'desc="([^"]+)"', r.headers["server-timing"])
        assert steps.count("tag_remote.add") == runs


def test_request_id_in_every_function_log(mixed_graph):
    client_rid = "req-test-logs-7"
    r = post(mixed_graph, "/pipeline", {"text": "x"}, headers={"x-request-id": client_rid})
    assert r.status_code == 200
    rid = r.headers["x-request-id"]
    want = {"gateway", "gate", "tag_inline", "tag_remote", "shout", "audit"}
    deadline = time.monotonic() + 10  # a replica logs its step just after replying, the audit comes by event
    while time.monotonic() < deadline:
        functions = {d["function"] for d in mixed_graph.log_lines()
                     if d.get("request_id") == rid and d.get("client_request_id") == client_rid}
        if want <= functions:
            break
        time.sleep(0.1)
    assert want <= functions
    step_lines = [d for d in mixed_graph.log_lines() if d.get("request_id") == rid and d.get("msg") == "step done"]
    assert all(isinstance(d["ms"], float) and d["step"] for d in step_lines)


def test_replicas_share_the_remote_step(mixed_graph):
    pids = set()
    for _ in range(30):
        pids.add(post(mixed_graph, "/pipeline", {"text": "x"}).json()["trail"][1])
    assert len(pids) == 2  # tag_remote declares replicas: 2


def test_step_can_end_the_route_early(mixed_graph):
    before = metric(mixed_graph, "scaigrid_step_seconds_count", route="pipeline", step="shout.upper",
                    placement="remote")
    r = post(mixed_graph, "/pipeline", {"stop": True})
    assert r.status_code == 200 and r.json() == {"stopped_early": True}
    assert re.findall(r'desc="([^"]+)"', r.headers["server-timing"]) == ["gate.check"]
    after = metric(mixed_graph, "scaigrid_step_seconds_count", route="pipeline", step="shout.upper",
                   placement="remote")
    assert after == before


def test_typed_error_maps_to_status_in_openai_format(mixed_graph):
    r = post(mixed_graph, "/pipeline", {"deny": True})
    assert r.status_code == 403
    assert r.json() == {"error": {"message": "the gate refuses this request", "type": "permission_error",
                                  "param": None, "code": "gate_closed"}}
    rid = r.headers["x-request-id"]
    mine = [rec for rec in audit_records(mixed_graph, rid=rid) if rec["id"] == rid]
    assert mine and mine[0]["error"] == "gate_closed"  # after-steps see failed requests too


def test_step_timeout_is_a_504_and_the_gateway_goes_on(mixed_graph):
    r = post(mixed_graph, "/slow", {"seconds": 3})
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "step_timeout" and "slow.wait" in r.json()["error"]["message"]
    assert r.elapsed.total_seconds() < 2.5  # the route's 1 s override, not the function's 5 s
    assert post(mixed_graph, "/slow", {"seconds": 0}).status_code == 200


def test_inline_step_timeout_stops_the_worker(mixed_graph):
    r = post(mixed_graph, "/slow-inline", {"seconds": 3})
    assert r.status_code == 504 and "(inline)" in r.json()["error"]["message"]
    assert r.elapsed.total_seconds() < 1.5
    assert post(mixed_graph, "/slow-inline", {"seconds": 0}).status_code == 200
    # the abandoned worker was stopped: its log line for the step never says it finished
    rid = r.headers["x-request-id"]
    time.sleep(3)
    assert not [d for d in mixed_graph.log_lines() if d.get("request_id") == rid and d.get("msg") == "step done"]


@pytest.mark.parametrize("method, path, body, status, code", [
    ("POST", "/pipeline", b"{not json", 400, "invalid_json"),
    ("POST", "/nowhere", b"{}", 404, "unknown_route"),
    ("GET", "/pipeline", None, 404, "method_not_allowed"),
])
def test_bad_requests_get_clear_errors(mixed_graph, method, path, body, status, code):
    r = httpx.request(method, mixed_graph.base_url + path, content=body)
    assert r.status_code == status
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"]


def test_health_readiness_and_metrics(mixed_graph):
    assert httpx.get(mixed_graph.base_url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(mixed_graph.base_url + "/readyz").json()
    assert ready["ready"] is True
    assert ready["consumers"] == {"shout": 1, "slow": 1, "tag_remote": 2, "ticker": 1}
    assert "scaigrid_request_seconds_bucket" in httpx.get(mixed_graph.base_url + "/metrics").text
