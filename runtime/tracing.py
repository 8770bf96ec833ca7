"""OpenTelemetry traces: one trace per request across the gateway, its inline steps and every remote function.

Off unless an OTLP endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); then
each process exports over OTLP/HTTP (protobuf; gRPC's client blocks the eventlet hub) as `scaigrid-<function>`.
While it is off, `on` is False and every caller's one check of it is all tracing costs: no span, no header.

The context crosses RabbitMQ in message headers: `nameko.traceparent` on RPC requests and one-envelope events
(nameko hands `nameko.*` headers to a worker as its context data), `traceparent` on token-stream chunks that cross
the broker (the producing span, for a consumer of the queue; the gateway relays them). A batched after-step message
holds envelopes of many requests, so each of those envelopes carries its own `traceparent`, and the batch's span
links to them all (OpenTelemetry's messaging conventions: a batch is linked, not parented).
Spans of client libraries that have no span of ours above them (a background loop's Redis call) are dropped.
"""
from __future__ import annotations

import logging
import os

from nameko.events import EventHandler
from nameko.extensions import DependencyProvider
from nameko.rpc import Rpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import INVALID_SPAN, Link, Span, SpanKind, Status, StatusCode

from . import logs
from .inline import INLINE_CONFIG_KEY

_log = logging.getLogger("scaigrid.tracing")
FUNCTION = "scaigrid.function"  # on every span: the function whose code it measures
SCOPE = "scaigrid"  # the instrumentation scope of the spans made here
HEADER_PREFIX = "nameko."  # nameko puts these headers, prefix dropped, into the worker's context data
TRACEPARENT = "traceparent"  # W3C's header; also the key of an after-step envelope's own trace (runtime/after.py)
MAX_LINKS = 128  # the SDK's default limit of links on a span
CAPTURE_CONTENT = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"

on = False  # set once at start-up by configure(); read as `tracing.on`, never copied
_tracer: trace.Tracer | None = None
_provider = None
_pipe = None  # runtime/span_exporter.py: where ended spans go
_function = "-"
_EMPTY = otel_context.Context()  # no parent: a new trace


def endpoint_configured(environ=os.environ) -> bool:
    """Whether the standard variables ask for traces: an OTLP endpoint, and neither the SDK nor the exporter off."""
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true" or environ.get("OTEL_TRACES_EXPORTER") == "none":
        return False
    return bool(environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def configure(function: str, replica: int = 0) -> bool:
    """Start tracing for this process if the environment asks for it (see the module); True if it is on."""
    global on, _tracer, _provider, _pipe, _function
    if on or not endpoint_configured():
        return on
    from .span_exporter import SpanPipe
    from .span_recorder import TracerProvider
    from .tracing_sdk import configured_sampler, instrument_clients

    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol and protocol != "http/protobuf":
        logs.log(_log, logging.WARNING, "only OTLP over HTTP (protobuf) is supported; exporting with it",
                 asked=protocol)
    _function = function
    _pipe = SpanPipe(f"scaigrid-{function}", f"{function}-{replica}-{os.getpid()}")
    _provider = TracerProvider(SCOPE, FUNCTION, lambda: getattr(logs.current, "function", None) or _function,
                               configured_sampler(), _pipe.put)
    trace.set_tracer_provider(_provider)
    _tracer = trace.get_tracer(SCOPE)
    instrument_clients()
    logs.trace_ids = ids
    on = True
    logs.log(_log, logging.INFO, "tracing on", service=f"scaigrid-{function}")
    return True


def shutdown(timeout_s: float = 5.0) -> None:
    """Export what is buffered (a stopping worker); the spans of its last requests are not lost."""
    global on
    if _pipe is None:
        return
    on = False
    _pipe.shutdown(timeout_s)


def capture_content() -> bool:
    """Whether prompts and completions may go into spans (`OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`,
    off by default): they are the tenants' data."""
    return on and os.environ.get(CAPTURE_CONTENT, "").lower() == "true"


# spans --------------------------------------------------------------------------------------------------------
def current_span() -> Span:
    """The span the caller runs under (a do-nothing one when tracing is off): `set_attributes`, `add_event`."""
    return trace.get_current_span() if on else INVALID_SPAN


def start(name: str, function: str | None = None, kind: SpanKind = SpanKind.INTERNAL, parent=None,
          attributes: dict | None = None, links: list[Link] | None = None) -> Span:
    """A span of ours (not made current): child of `parent` (a Context) or of the current span."""
    attrs = {FUNCTION: function or getattr(logs.current, "function", None) or _function, **(attributes or {})}
    return _tracer.start_span(name, context=parent, kind=kind, attributes=attrs, links=links)


class span:
    """`with tracing.span(...)`: `start` made current for the block; an exception is recorded on it (a typed 4xx is
    an answer, not an error). A class, not a generator: it is on every step's path."""

    __slots__ = ("span", "_token")

    def __init__(self, name: str, function: str | None = None, kind: SpanKind = SpanKind.INTERNAL, parent=None,
                 attributes: dict | None = None, links: list[Link] | None = None):
        self.span = start(name, function, kind, parent, attributes, links)

    def __enter__(self) -> Span:
        self._token = otel_context.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(self, kind, exc, traceback) -> None:
        if exc is not None:
            failed(self.span, exc)
        otel_context.detach(self._token)
        self.span.end()


def failed(target: Span, exc: BaseException) -> None:
    """Mark a span with how its work failed: a typed step error below 500 is the caller's (an answer, kept as an
    attribute), anything else an error."""
    status = getattr(exc, "status", 500)
    target.set_attribute("scaigrid.error.code", getattr(exc, "code", None) or type(exc).__name__)
    if not isinstance(status, int) or status >= 500:
        target.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {str(exc)[:200]}"))


class attached:
    """`with tracing.attached(ctx)`: run a block under a context captured elsewhere (`captured()`): a new
    greenthread starts with none. With None (tracing off) it does nothing."""

    __slots__ = ("context", "_token")

    def __init__(self, context):
        self.context = context

    def __enter__(self) -> None:
        self._token = otel_context.attach(self.context) if self.context is not None else None

    def __exit__(self, *exc) -> None:
        if self._token is not None:
            otel_context.detach(self._token)


def captured():
    """The current context, to hand to another greenthread (`attached`); None when tracing is off."""
    return otel_context.get_current() if on else None


def in_span(target: Span):
    """A context whose current span is `target`."""
    return trace.set_span_in_context(target)


# propagation ----------------------------------------------------------------------------------------------------
def headers() -> dict[str, str]:
    """The current context as HTTP headers for a call out of ScaiGrid (an upstream): the configured propagators'
    (`OTEL_PROPAGATORS`; W3C trace context and baggage by default)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def traceparent() -> str:
    """The current span's W3C traceparent ('' when there is none): formatted here, a few times faster than the
    propagator on a path every request takes."""
    context = trace.get_current_span().get_span_context()
    return _w3c(context) if context.is_valid else ""


def _w3c(context) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def context_headers(prefix: str = "") -> dict[str, str]:
    """The current span's W3C trace context (`traceparent`, and `tracestate` when set) as message headers, names
    prefixed: what crosses our own broker between our own processes (baggage does not)."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    carrier = {prefix + TRACEPARENT: _w3c(context)}
    if context.trace_state:
        carrier[prefix + "tracestate"] = context.trace_state.to_header()
    return carrier


def extract(carrier) -> otel_context.Context:
    """The context a caller sent (headers, or a message's context data, holding `traceparent`): an empty one,
    without asking the propagators, when it holds none of their fields (most requests)."""
    if not carrier or not any(name in carrier for name in propagate.get_global_textmap().fields):
        return _EMPTY
    return propagate.extract(carrier)


def link_to(traceparent_value: str) -> Link | None:
    """A link to the span a traceparent names (a batch's envelopes, each from its own request)."""
    context = trace.get_current_span(extract({"traceparent": traceparent_value})).get_span_context()
    return Link(context) if context.is_valid else None


def ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span in hex, for log lines; None when there is none."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


# workers --------------------------------------------------------------------------------------------------------
class StepSpan(DependencyProvider):
    """A span around each worker of a remote replica (an RPC step, an event, a batch), continuing the context its
    message carried. Inline copies make none: the executor's step span is theirs. HTTP workers neither: the
    gateway opens its own server span, which outlives the worker for a stream."""

    def setup(self):
        self.inline = bool(self.container.config.get(INLINE_CONFIG_KEY))

    def worker_setup(self, worker_ctx):
        if not on or self.inline:
            return
        entrypoint = worker_ctx.entrypoint
        links = batch = None
        if isinstance(entrypoint, Rpc):
            kind, system = SpanKind.SERVER, {"rpc.system": "nameko"}
        elif isinstance(entrypoint, EventHandler) or getattr(entrypoint, "queue", None) is not None:
            kind, system = SpanKind.CONSUMER, {"messaging.system": "rabbitmq", "messaging.operation.type": "process"}
            batch = worker_ctx.args[0] if worker_ctx.args and isinstance(worker_ctx.args[0], list) else None
            if batch is not None:  # envelopes of many requests (runtime/batch.py): linked, not parented
                traceparents = [e.get(TRACEPARENT) for e in batch[:MAX_LINKS] if isinstance(e, dict)]
                links = [link for link in map(link_to, filter(None, traceparents)) if link is not None]
                system["messaging.batch.message_count"] = len(batch)
        else:
            return
        name = f"{worker_ctx.service_name}.{entrypoint.method_name}"
        target = start(name, worker_ctx.service_name, kind, extract(worker_ctx.data) if batch is None else None,
                       {"rpc.service": worker_ctx.service_name, "rpc.method": entrypoint.method_name, **system},
                       links)
        worker_ctx.scaigrid_span = (target, otel_context.attach(trace.set_span_in_context(target)))

    def worker_result(self, worker_ctx, result=None, exc_info=None):
        held = getattr(worker_ctx, "scaigrid_span", None) if on else None
        if held is not None and exc_info is not None:
            failed(held[0], exc_info[1])

    def worker_teardown(self, worker_ctx):
        held = getattr(worker_ctx, "scaigrid_span", None) if on else None
        if held is not None:
            worker_ctx.scaigrid_span = None
            otel_context.detach(held[1])
            held[0].end()
