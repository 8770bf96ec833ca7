"""The span recorder and its exporter process (runtime/span_recorder.py, runtime/span_exporter.py) in a traced
process of their own, against a real OTLP/HTTP receiver: what a span keeps, what sampling drops, what happens when
the exporter process dies or its worker does, and the bound on what waits.

Each scenario is PROBE run in a fresh interpreter with eventlet patched, as a worker is.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from otlp_receiver import OtlpReceiver

PROBE = textwrap.dedent("""
    import eventlet
    eventlet.monkey_patch()
    import json, os, signal, sys
    from opentelemetry import trace
    from prometheus_client import REGISTRY
    from scaigrid.runtime import logs, span_exporter, tracing

    scenario = sys.argv[1]
    span_exporter.RESTART_AFTER_S = 0  # a dead exporter comes back at the next batch (30 s in a worker)
    logs.configure("probe", "WARNING")
    assert tracing.configure("probe")
    library = trace.get_tracer("a.client.library")  # as a store's instrumentation asks for one
    out = {}

    def lost(reason):
        return REGISTRY.get_sample_value("scaigrid_trace_spans_dropped_total", {"reason": reason})

    def trace_id(span):
        return format(span.get_span_context().trace_id, "032x")

    if scenario == "values":
        eventlet.sleep(3)  # a worker idle at first: its exporter waits, blocked on its socket, for the first batch
        with tracing.span("root") as root:
            out["trace"] = trace_id(root)
            root.set_attribute("none", None)
            root.set_attribute("object", object())  # not plain: the pipe's fallback cleans the batch
            root.set_attribute("mixed", [1, "a"])
            root.set_attribute("ints", [1, 2])
            for i in range(200):
                root.set_attribute(f"a{i:03d}", i)
            try:
                with library.start_as_current_span("client call"):
                    raise ValueError("the store said no")
            except ValueError:
                pass
        with library.start_as_current_span("orphan") as orphan:  # no span of ours above: no trace of its own
            out["orphan_recording"] = orphan.is_recording()
    elif scenario == "sampling":
        with tracing.span("unsampled root") as root:
            out["root"] = trace_id(root)
            out["root_recording"] = root.is_recording()
        parent = tracing.extract({"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"})
        with tracing.span("continues a sampled caller", parent=parent) as continued:
            with tracing.span("its child"):
                pass
        out["continued"] = trace_id(continued)
    elif scenario == "restart":
        first = tracing._pipe.child
        first.kill()
        first.wait()
        with tracing.span("lost with its exporter"):
            pass
        tracing._pipe._write()  # finds the socket closed: says so
        tracing._pipe._write()  # the next batch starts another exporter
        with tracing.span("after the restart") as span:
            out["after"] = trace_id(span)
        out["pids"] = [first.pid, tracing._pipe.child.pid]
        out["counted"] = lost("exporter_exited")
    elif scenario == "orphaned":
        with tracing.span("handed over before the worker died") as span:
            out["trace"] = trace_id(span)
        tracing._pipe._write()
        print(json.dumps({**out, "child": tracing._pipe.child.pid}), flush=True)
        eventlet.sleep(600)  # killed here by the test
    elif scenario == "bounded":
        for i in range(1000):  # no yield: the flusher cannot run, the buffer only fills
            with tracing.span(f"burst {i}"):
                pass
        out["dropped"] = tracing._pipe.dropped
        out["counted"] = lost("queue_full")
    tracing.shutdown(10)
    print(json.dumps(out), flush=True)
""")


def probe(scenario: str, receiver: OtlpReceiver, **env) -> tuple[dict, str]:
    environ = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "50",
               **env}
    done = subprocess.run([sys.executable, "-c", PROBE, scenario], env=environ, capture_output=True, text=True,
                          timeout=90)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


@pytest.fixture
def receiver():
    with OtlpReceiver() as rx:
        yield rx


def test_a_span_keeps_what_otlp_can_carry_within_the_limits(receiver):
    out, _ = probe("values", receiver)
    spans = {s.name: s for s in receiver.trace(out["trace"])}
    root, call = spans["root"], spans["client call"]
    assert root.attributes["scaigrid.function"] == "probe" and root.attributes["ints"] == [1, 2]
    assert not {"none", "object", "mixed"} & set(root.attributes)  # no value OTLP cannot hold
    assert len(root.attributes) <= 128 and "a000" in root.attributes and "a199" not in root.attributes  # the SDK's
    # limit: the first 128 set are kept
    assert call.parent_id == root.span_id and call.scope == "a.client.library"
    assert call.attributes["scaigrid.function"] == "probe"  # a library's span names the function it ran in
    assert call.status_code == 2  # ERROR
    (name, event), = call.events
    assert name == "exception" and event["exception.type"] == "ValueError"
    assert event["exception.message"] == "the store said no" and "Traceback" in event["exception.stacktrace"]
    assert out["orphan_recording"] is False
    assert not [s for s in receiver.spans if s.name == "orphan"]


def test_the_configured_sampler_decides_for_a_trace_that_starts_here(receiver):
    out, _ = probe("sampling", receiver, OTEL_TRACES_SAMPLER="parentbased_traceidratio",
                   OTEL_TRACES_SAMPLER_ARG="0")
    assert out["root_recording"] is False
    assert out["continued"] == "ab" * 16  # a sampled caller's decision holds whatever the ratio
    names = {s.name for s in receiver.trace(out["continued"])}
    assert names == {"continues a sampled caller", "its child"}
    assert not receiver.trace(out["root"])


def test_always_off_records_nothing(receiver):
    out, _ = probe("values", receiver, OTEL_TRACES_SAMPLER="always_off")
    assert not receiver.spans and receiver.requests == 0


def test_a_dead_exporter_is_named_and_replaced(receiver):
    out, stderr = probe("restart", receiver)
    old, new = out["pids"]
    assert old != new and out["counted"] == 1
    warning = next(json.loads(line) for line in stderr.splitlines() if "span exporter process exited" in line)
    assert warning["level"] == "warning" and warning["spans"] >= 1
    assert [s.name for s in receiver.trace(out["after"])] == ["after the restart"]


def test_the_exporter_sends_what_it_holds_and_stops_when_its_worker_is_killed(receiver):
    environ = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "600000"}
    worker = subprocess.Popen([sys.executable, "-c", PROBE, "orphaned"], env=environ, stdout=subprocess.PIPE,
                              text=True)
    try:
        out = json.loads(worker.stdout.readline())
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    deadline = time.monotonic() + 20  # its grace is 10 s (span_exporter.EXIT_GRACE_S)
    while os.path.exists(f"/proc/{out['child']}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{out['child']}"), "the exporter outlived its worker"
    assert [s.name for s in receiver.trace(out["trace"])] == ["handed over before the worker died"]


def test_what_waits_for_export_is_bounded_and_the_rest_counted(receiver):
    out, stderr = probe("bounded", receiver, OTEL_BSP_MAX_QUEUE_SIZE="200", OTEL_BSP_MAX_EXPORT_BATCH_SIZE="100",
                        OTEL_BSP_SCHEDULE_DELAY="600000")
    assert out["dropped"] == out["counted"] == 800
    assert len([s for s in receiver.spans if s.name.startswith("burst ")]) == 200
    warning = next(json.loads(line) for line in stderr.splitlines() if "spans dropped" in line)
    assert warning["spans"] == 800
