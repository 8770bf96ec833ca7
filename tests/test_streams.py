"""Token streams ride RabbitMQ from the step to the gateway process: real, incremental, cancellable."""
import json
import time

import httpx

from conftest import audit_records


def read_stream(graph, body, stop_after=None):
    """(chunks with client receive times, saw [DONE], request id)."""
    chunks, done = [], False
    with httpx.stream("POST", graph.base_url + "/stream", json={"stream": True, **body}, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        rid = r.headers["x-request-id"]
        for line in r.iter_lines():
            if not line:
                continue
            assert line.startswith("data: ")
            if line == "data: [DONE]":
                done = True
                break
            chunks.append((json.loads(line[6:]), time.time()))
            if stop_after is not None and len(chunks) >= stop_after:
                break
    return chunks, done, rid


def test_chunks_leave_as_they_are_made(mixed_graph):
    chunks, done, rid = read_stream(mixed_graph, {"n": 8, "interval": 0.15})
    assert done and [c["i"] for c, _ in chunks] == list(range(8))
    sent = [c["sent_at"] for c, _ in chunks]
    # the step's own clock: chunks left 150 ms apart, not as one finished answer cut up
    assert all(b - a > 0.1 for a, b in zip(sent, sent[1:]))
    # and each reached the client right after it left, well before the last one was made
    assert all(received - sent_at < 0.1 for (c, received), sent_at in zip(chunks, sent))
    assert chunks[0][1] < sent[-1] - 0.8
    assert any(rec["id"] == rid and rec["usage"] == {"chunks": 8} for rec in audit_records(mixed_graph, rid=rid))


def test_client_disconnect_stops_generation_and_usage_is_kept(mixed_graph):
    chunks, done, rid = read_stream(mixed_graph, {"n": 200, "interval": 0.05}, stop_after=5)
    assert not done and len(chunks) == 5
    deadline = time.monotonic() + 10
    record = None
    while record is None and time.monotonic() < deadline:
        record = next((r for r in audit_records(mixed_graph) if r["id"] == rid), None)
        time.sleep(0.1)
    assert record is not None, "the after-step never saw the cancelled stream"
    assert record["usage"]["cancelled"] is True
    assert 5 <= record["usage"]["chunks"] <= 10  # stopped within a few chunks of the client leaving


def test_streams_in_parallel_stay_apart(mixed_graph):
    import concurrent.futures as cf

    with cf.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda n: read_stream(mixed_graph, {"n": n, "interval": 0.02}), range(3, 9)))
    for n, (chunks, done, _) in zip(range(3, 9), results):
        assert done and [c["i"] for c, _ in chunks] == list(range(n))


def test_error_before_first_chunk_is_a_plain_error(mixed_graph):
    r = httpx.post(mixed_graph.base_url + "/stream", json={"stream": True, "n": "lots"}, timeout=30)
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
