"""A real OTLP/HTTP trace receiver for tests and the bench: POST /v1/traces with application/x-protobuf, decoded
with OpenTelemetry's own proto package (ExportTraceServiceRequest), spans kept in memory."""
from __future__ import annotations

import gzip
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                       ExportTraceServiceResponse)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from scaigrid.runtime.testing import free_port

KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


def _value(v: AnyValue):
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, which) if which else None


@dataclass
class ReceivedSpan:
    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict
    links: list[tuple[str, str]] = field(default_factory=list)
    status_code: int = 0
    start_ns: int = 0
    end_ns: int = 0
    events: list[tuple[str, dict]] = field(default_factory=list)
    scope: str = ""


class OtlpReceiver:
    """`with OtlpReceiver() as rx:` point OTEL_EXPORTER_OTLP_ENDPOINT at `rx.endpoint`; `rx.spans` as they come."""

    def __init__(self, port: int | None = None, keep: bool = True):
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.spans: list[ReceivedSpan] = []
        self.keep = keep  # False: decode and count, keep nothing (a long bench)
        self.received = self.requests = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    data = gzip.decompress(data)
                elif encoding == "deflate":
                    data = zlib.decompress(data)
                if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_response(404)
                    self.end_headers()
                    return
                receiver._take(ExportTraceServiceRequest.FromString(data))
                body = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # how much came: a sink's only output
                body = f'{{"spans": {receiver.received}, "requests": {receiver.requests}}}'.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # quiet: pytest shows what matters
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _take(self, request: ExportTraceServiceRequest) -> None:
        if not self.keep:  # a sink: decoded, counted, nothing built (its CPU is the bench machine's too)
            count = sum(len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans)
            with self._lock:
                self.received += count
                self.requests += 1
            return
        received = []
        for resource_spans in request.resource_spans:
            resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    received.append(ReceivedSpan(
                        service=resource.get("service.name", ""), name=s.name, kind=KINDS.get(s.kind, str(s.kind)),
                        trace_id=s.trace_id.hex(), span_id=s.span_id.hex(), parent_id=s.parent_span_id.hex(),
                        attributes={kv.key: _value(kv.value) for kv in s.attributes},
                        links=[(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
                        status_code=s.status.code, start_ns=s.start_time_unix_nano, end_ns=s.end_time_unix_nano,
                        events=[(e.name, {kv.key: _value(kv.value) for kv in e.attributes}) for e in s.events],
                        scope=scope_spans.scope.name))
        with self._lock:
            self.spans.extend(received)
            self.received += len(received)
            self.requests += 1

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def wait_for(self, predicate, timeout: float = 30) -> list[ReceivedSpan]:
        """Poll until `predicate(spans)` holds (spans are exported in batches, after the answer); the spans then."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                spans = list(self.spans)
            if predicate(spans) or time.monotonic() > deadline:
                return spans
            time.sleep(0.05)

    def __enter__(self) -> "OtlpReceiver":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()



if __name__ == "__main__":  # bench/gateway.py --tracing: a sink on a port of its choosing, until stopped
    import sys

    OtlpReceiver(int(sys.argv[1]), keep=False).server.serve_forever()
