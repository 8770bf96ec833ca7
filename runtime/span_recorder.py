"""The tracer a traced process records its spans with: OpenTelemetry's API (so the stores' client instrumentations
and propagation use it unchanged), a span that is a few plain fields, and encoding and export in another process
(runtime/span_exporter.py, which hands them to the SDK's OTLP exporter).

Why not the SDK's spans in the process: measured on this machine under eventlet, the SDK's span cost 33 µs to
start and end (attribute validation under a lock was a third of it) and its OTLP encoding 47 µs more on the hub, at
nine spans a chat request: +1.0 ms on a 3.8 ms median. Here a span costs a few µs; its attribute values are kept as
set and checked in the exporter process (what OTLP cannot encode is dropped there, the rest cut to the SDK's
limits).

Sampling follows the SDK's rules as `parentbased_*` does: a span with a parent in this process shares its
decision; a span with a remote parent or none asks the configured sampler (`OTEL_TRACES_SAMPLER`). A trace starts
only at a span of ours: a client library's span with no parent (a background loop's Redis call) is not recorded.
"""
from __future__ import annotations

import functools
import random
import time
import traceback
from typing import Callable

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (INVALID_SPAN, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode,
                                 TraceFlags)

MAX_ATTRIBUTES = MAX_EVENTS = MAX_LINKS = 128  # the SDK's default span limits: a span stays bounded
MAX_STACKTRACE = 4000  # characters of an exception's stack kept in its event
SAMPLED, NOT_SAMPLED = TraceFlags(TraceFlags.SAMPLED), TraceFlags(TraceFlags.DEFAULT)
_SCALARS = (str, bool, int, float)


def _value(value):
    """An attribute value the OTLP encoder takes (a scalar or a homogeneous sequence of them), else None."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, (list, tuple)):
        kind = type(value[0]) if value else str
        if kind in _SCALARS and all(type(v) is kind for v in value):  # bool is not an int here
            return tuple(value)
    return None


class RecordedSpan(trace.Span):
    """A recording span: what OTLP needs, handed to `sink` when it ends."""

    __slots__ = ("_name", "_context", "_parent", "_kind", "_start", "_end", "_attributes", "_events", "_links",
                 "_status", "_ended", "_scope", "_sink")

    def __init__(self, name: str, context: SpanContext, parent: SpanContext | None, kind: SpanKind,
                 attributes: dict | None, links, scope: str, sink: Callable[["RecordedSpan"], None],
                 start_time: int | None = None):
        self._name, self._context, self._parent, self._kind, self._scope, self._sink = (
            name, context, parent, kind, scope, sink)
        self._attributes = dict(attributes) if attributes else {}  # checked in record(), off the request's path
        self._links = [(link.context, link.attributes) for link in (links or ())[:MAX_LINKS] if link.context.is_valid]
        self._events: list = []
        self._status = (StatusCode.UNSET, None)
        self._ended = False
        self._start = start_time or time.time_ns()
        self._end = 0

    def get_span_context(self) -> SpanContext:
        return self._context

    # what instrumentations may read of the SDK's spans beyond the API (OpenTelemetry's Redis one read `name`)
    name = property(lambda self: self._name)
    kind = property(lambda self: self._kind)
    attributes = property(lambda self: dict(self._attributes))
    parent = property(lambda self: self._parent)
    context = property(lambda self: self._context)

    def is_recording(self) -> bool:
        return not self._ended

    def set_attribute(self, key: str, value) -> None:
        attributes = self._attributes
        if not self._ended and (key in attributes or len(attributes) < MAX_ATTRIBUTES):
            attributes[key] = value

    def set_attributes(self, attributes) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(self, name: str, attributes=None, timestamp: int | None = None) -> None:
        if not self._ended and len(self._events) < MAX_EVENTS:
            self._events.append((name, timestamp or time.time_ns(), attributes))

    def add_link(self, context: SpanContext, attributes=None) -> None:
        if not self._ended and context.is_valid and len(self._links) < MAX_LINKS:
            self._links.append((context, attributes))

    def update_name(self, name: str) -> None:
        if not self._ended:
            self._name = name

    def set_status(self, status, description: str | None = None) -> None:
        if isinstance(status, Status):
            code, description = status.status_code, status.description
        else:
            code = status
        if self._ended or self._status[0] is StatusCode.OK or code is StatusCode.UNSET:
            return  # OK is final and UNSET changes nothing (the specification's rule)
        self._status = (code, description if code is StatusCode.ERROR else None)

    def record_exception(self, exception: BaseException, attributes=None, timestamp: int | None = None,
                         escaped: bool = False) -> None:
        stack = "".join(traceback.format_exception(type(exception), exception, exception.__traceback__))
        self.add_event("exception", {"exception.type": type(exception).__qualname__,
                                     "exception.message": str(exception)[:MAX_STACKTRACE],
                                     "exception.stacktrace": stack[-MAX_STACKTRACE:],
                                     "exception.escaped": str(escaped), **(attributes or {})}, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if not self._ended:
            self._ended = True
            self._end = end_time or time.time_ns()
            self._sink(self)

    def record(self) -> tuple:
        """The ended span as plain values for the exporter process (runtime/span_exporter.py), attributes as they
        were set: `clean` them where the pipe cannot carry them, the exporter does in any case."""
        ctx, parent = self._context, self._parent
        return (self._scope, self._name, ctx.trace_id, ctx.span_id, int(ctx.trace_flags),
                ctx.trace_state.to_header() if ctx.trace_state else "",
                parent.span_id if parent is not None else 0, parent is not None and parent.is_remote,
                self._kind.value, self._start, self._end, self._attributes, self._events,
                [(c.trace_id, c.span_id, int(c.trace_flags), a) for c, a in self._links],
                self._status[0].value, self._status[1])


def clean(record: tuple) -> tuple:
    """A span's record with only the attribute values OTLP can encode (a scalar or a homogeneous sequence of them),
    as plain dicts: what OTLP cannot encode (None, an object) is left out."""
    *head, attributes, events, links, status, description = record
    return (*head, _clean(attributes), [(n, t, _clean(a)) for n, t, a in events],
            [(t, s, f, _clean(a)) for t, s, f, a in links], status, description)


def _clean(attributes) -> dict:
    if not attributes:
        return {}
    return {k: v for k, v in ((k, _value(v)) for k, v in attributes.items()) if v is not None and isinstance(k, str)
            and k}


class Tracer(trace.Tracer):
    def __init__(self, provider: "TracerProvider", scope: str):
        self.provider, self.scope = provider, scope

    def start_span(self, name, context=None, kind=SpanKind.INTERNAL, attributes=None, links=None,
                   start_time=None, record_exception=True, set_status_on_exception=True) -> trace.Span:
        provider = self.provider
        parent = trace.get_current_span(context).get_span_context()
        ours = self.scope == provider.scope
        if parent.is_valid and not parent.is_remote:
            trace_id, flags = parent.trace_id, parent.trace_flags
        elif not parent.is_valid and not ours:
            return INVALID_SPAN  # a client library's span outside any request: no trace of its own
        else:
            trace_id = parent.trace_id if parent.is_valid else random.getrandbits(128) or 1
            flags = provider.decide(context, trace_id, name, kind, attributes, links)
        span_context = SpanContext(trace_id, random.getrandbits(64) or 1, False, flags,
                                   parent.trace_state if parent.is_valid else None)
        if not flags.sampled:
            return NonRecordingSpan(span_context)
        span = RecordedSpan(name, span_context, parent if parent.is_valid else None, kind, attributes, links,
                            self.scope, provider.sink, start_time)
        if not ours:  # a client library's span: named for the function whose worker made it
            span.set_attribute(provider.function_key, provider.function())
        return span

    def start_as_current_span(self, name, context=None, kind=SpanKind.INTERNAL, attributes=None, links=None,
                              start_time=None, record_exception=True, set_status_on_exception=True,
                              end_on_exit=True) -> "_Current":
        return _Current(self, (name, context, kind, attributes, links, start_time), end_on_exit, record_exception,
                        set_status_on_exception)


class _Current:
    """`with tracer.start_as_current_span(...)` (what the client instrumentations use) as the API's `use_span`
    does it, in a class: that one is two generator context managers deep, on every SQL and webhook call. As a
    decorator, a span a call."""

    __slots__ = ("tracer", "args", "end_on_exit", "record_exception", "set_status", "span", "_token")

    def __init__(self, tracer: Tracer, args: tuple, end_on_exit: bool, record_exception: bool, set_status: bool):
        self.tracer, self.args, self.end_on_exit, self.record_exception, self.set_status = (
            tracer, args, end_on_exit, record_exception, set_status)

    def __enter__(self) -> trace.Span:
        self.span = self.tracer.start_span(*self.args)
        self._token = otel_context.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(self, kind, exc, traceback) -> None:
        otel_context.detach(self._token)
        span = self.span
        if isinstance(exc, Exception) and span.is_recording():  # not GeneratorExit: as the API's use_span
            if self.record_exception:
                span.record_exception(exc)
            if self.set_status:
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        if self.end_on_exit:
            span.end()

    def __call__(self, function):
        @functools.wraps(function)
        def wrapped(*args, **kwargs):
            with _Current(self.tracer, self.args, self.end_on_exit, self.record_exception, self.set_status):
                return function(*args, **kwargs)
        return wrapped


class TracerProvider(trace.TracerProvider):
    """The process's tracers. `sampler`: the SDK's configured sampler, asked for a trace's first span here; `sink`:
    where ended spans go (runtime/span_exporter.py's pipe); `function()`: the function a client span belongs to."""

    def __init__(self, scope: str, function_key: str, function: Callable[[], str], sampler,
                 sink: Callable[[tuple], None]):
        self.scope, self.function_key, self.function, self.sampler, self.sink = (
            scope, function_key, function, sampler, sink)
        self._tracers: dict[str, Tracer] = {}

    def get_tracer(self, instrumenting_module_name, instrumenting_library_version=None, schema_url=None,
                   attributes=None) -> Tracer:
        name = instrumenting_module_name or "unknown"
        if name not in self._tracers and len(self._tracers) < 64:  # instrumentations ask again and again
            self._tracers[name] = Tracer(self, name)
        return self._tracers.get(name) or Tracer(self, name)

    def decide(self, context, trace_id, name, kind, attributes, links) -> TraceFlags:
        result = self.sampler.should_sample(context, trace_id, name, kind, attributes, links)
        return SAMPLED if result.decision.is_sampled() else NOT_SAMPLED

