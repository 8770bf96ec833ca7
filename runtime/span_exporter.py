"""Span export in a process of its own: a traced worker batches its ended spans (runtime/span_recorder.py) and
hands each batch to a child over a socket; the child encodes them as OTLP (runtime/span_encoding.py) and sends each
with OpenTelemetry's OTLP/HTTP exporter's client (its endpoint, headers, timeout, compression and retries from the
standard `OTEL_*` variables). The batching is the SDK's BatchSpanProcessor's, done here: a batch goes when it holds
OTEL_BSP_MAX_EXPORT_BATCH_SIZE spans (128 unless set: each is marshalled on the hub) or OTEL_BSP_SCHEDULE_DELAY ms
after its first span; at most OTEL_BSP_MAX_QUEUE_SIZE spans wait, beyond that they are dropped and counted.

Why a process: the SDK's OTLP encoding is Python, ~47 µs a span measured, and a worker's hub serves every request
of the replica: encoding there stalled the next requests (a 128-span batch is 6 ms). Here a span costs its
marshalling (~1 µs, in the flusher, after the answer); the child encodes on another core, at a lower priority
(NICE), and a slow receiver slows only the child (the socket fills, the flusher waits cooperatively, the queue
bound holds).

The child outlives nothing: it stops at the end of its socket (the worker stopped, or died) after exporting what it
holds, within EXIT_GRACE_S; it ignores SIGTERM and SIGINT, which reach it with its worker's process group, so that
last export happens.
"""
from __future__ import annotations

import logging
import os
import marshal
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

from prometheus_client import Counter

from . import logs
from .span_recorder import clean

_log = logging.getLogger("scaigrid.tracing")
FRAME = struct.Struct(">I")  # each write: the marshalled batch's length, then the batch
BATCH, DELAY_MS, QUEUE = 128, 5000, 2048  # OTEL_BSP_*'s defaults here (the SDK's batch is 512: see the module)
EXIT_GRACE_S = 10.0  # the child's last export after its socket ends (its worker stopped or died)
RESTART_AFTER_S = 30.0  # a child that died is started again, at most this often
# spans that never reached the exporter process: the queue was full, or the process was gone with them
SPANS_LOST = Counter("scaigrid_trace_spans_dropped_total", "Ended spans not exported", ["reason"])
NICE = 10  # the child's CPU priority below its worker's: where cores are short, requests go first


class SpanPipe:
    """The worker's end: `put` an ended span (from the hub, a few hundred ns); a thread (green under eventlet)
    writes batches to the child."""

    def __init__(self, service: str, instance: str, environ=os.environ):
        self.argv = [sys.executable, "-m", "scaigrid.runtime.span_exporter", service, instance]
        self.batch = max(1, int(environ.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", BATCH)))
        self.delay_s = max(0, int(environ.get("OTEL_BSP_SCHEDULE_DELAY", DELAY_MS))) / 1000
        self.max_queue = max(self.batch, int(environ.get("OTEL_BSP_MAX_QUEUE_SIZE", QUEUE)))
        self.buffer: list = []  # ended spans (runtime/span_recorder.py's), each turned into plain values here
        self.dropped = 0
        self.closing = False
        self.started_at = 0.0
        self.wake, self.full = threading.Event(), threading.Event()
        self.writing = threading.Lock()  # the flusher and shutdown both write: one frame at a time
        self.child = self._start()
        self.flusher = threading.Thread(target=self._run, name="span-pipe", daemon=True)
        self.flusher.start()

    def _start(self) -> subprocess.Popen:
        """The child, its stdin one end of a socket pair: a socket, not a pipe, because eventlet's green pipe write
        retries EPIPE for ever (a dead child would spin the flusher), where a green socket raises it."""
        self.started_at = time.monotonic()
        self.socket, theirs = socket.socketpair()
        try:
            return subprocess.Popen(self.argv, stdin=theirs.fileno())
        finally:
            theirs.close()

    def put(self, span) -> None:
        buffer = self.buffer
        if len(buffer) >= self.max_queue:
            self.dropped += 1
            SPANS_LOST.labels("queue_full").inc()
            return
        buffer.append(span)
        if len(buffer) == 1:
            self.wake.set()
        elif len(buffer) == self.batch:
            self.full.set()

    def _run(self) -> None:
        while not self.closing:
            self.wake.wait()
            self.full.wait(self.delay_s)
            self.wake.clear()
            self.full.clear()
            self._write()

    def _write(self) -> None:
        """What is buffered, one frame (one export) per `batch` spans."""
        with self.writing:
            spans, self.buffer = self.buffer, []
            if self.socket.fileno() < 0 and not self._restarted():
                if spans:
                    SPANS_LOST.labels("exporter_exited").inc(len(spans))
                return
            for at in range(0, len(spans), self.batch):
                records = [span.record() for span in spans[at:at + self.batch]]
                try:  # marshal: plain values only, a few times faster than pickle, and no class can ride along
                    body = marshal.dumps(records)
                except ValueError:  # a value that is not plain (an instrumentation's object): cleaned here then
                    body = marshal.dumps([clean(record) for record in records])
                try:
                    self.socket.sendall(FRAME.pack(len(body)) + body)
                except OSError as exc:  # BrokenPipeError, ConnectionResetError: the child is gone
                    self._lost(len(spans) - at, exc)
                    return

    def _lost(self, count: int, exc: Exception) -> None:
        """The child is gone, its spans with it, and these: one line; spans are counted as lost until a new child
        starts (at the next batch, RESTART_AFTER_S after the last start at the soonest)."""
        self.socket.close()
        SPANS_LOST.labels("exporter_exited").inc(count)
        logs.log(_log, logging.WARNING, "span exporter process exited; spans lost until it is started again",
                 spans=count, exit_code=self.child.poll(), error=type(exc).__name__)

    def _restarted(self) -> bool:
        if self.closing or time.monotonic() - self.started_at < RESTART_AFTER_S:
            return False
        self.child = self._start()
        return True

    def shutdown(self, timeout_s: float) -> None:
        """Hand over what is buffered, close the socket and wait (cooperatively) for the child's last export."""
        self.closing = True
        self.wake.set()
        self._write()
        if self.dropped:
            logs.log(_log, logging.WARNING, "spans dropped: the exporter fell behind", spans=self.dropped)
        with self.writing:
            try:
                self.socket.close()
            except OSError:
                pass
        try:
            self.child.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.child.kill()


# the child ----------------------------------------------------------------------------------------------------
def main(argv: list[str]) -> int:
    """`python -m scaigrid.runtime.span_exporter SERVICE INSTANCE`: one export a batch on stdin, until it ends."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(NICE)
    service, instance = argv
    logs.configure(f"{service.removeprefix('scaigrid-')} (span exporter)", "WARNING")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanLimits

    from .span_encoding import Encoder, sdk_spans

    # this process's own name wins over a deployment-wide OTEL_SERVICE_NAME: the processes must stay apart
    resource = Resource.create().merge(Resource({"service.name": service, "service.instance.id": instance}))
    limits = SpanLimits()
    encoder = Encoder(dict(resource.attributes), limits.max_span_attribute_length)
    exporter = OTLPSpanExporter()  # endpoint, headers, timeout, compression from OTEL_*; retries, says what failed
    # its HTTP client takes the bytes runtime/span_encoding.py makes (2.4x cheaper than its own encoding); should
    # a later SDK move it, the exporter's export of rebuilt spans still works
    client = getattr(exporter, "_client", None)
    send = client.export if callable(getattr(client, "export", None)) else None
    if send is None:
        logs.log(_log, logging.WARNING, "the OTLP exporter's HTTP client is not where it was: exporting through "
                 "the SDK's own encoding (slower)", exporter=type(exporter).__module__)
    os.set_blocking(sys.stdin.fileno(), True)  # the worker's eventlet made its end of the pair non-blocking
    pipe, worker, watchdog = sys.stdin.buffer, os.getppid(), None
    while len(head := pipe.read(FRAME.size)) == FRAME.size:
        records = [clean(record) for record in marshal.loads(pipe.read(FRAME.unpack(head)[0]))]
        if watchdog is None and os.getppid() != worker:
            watchdog = _exit_within(EXIT_GRACE_S)  # the worker died: what it left goes out, for so long
        if send is not None:
            send(encoder.request(records))
        else:
            exporter.export(sdk_spans(records, resource, limits))
    watchdog = watchdog or _exit_within(EXIT_GRACE_S)
    exporter.shutdown()
    return 0


def _exit_within(seconds: float) -> threading.Timer:
    """End this process after `seconds` whatever it is doing: a receiver that is gone does not keep it past its
    worker for long."""
    timer = threading.Timer(seconds, os._exit, (0,))
    timer.daemon = True
    timer.start()
    return timer


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
