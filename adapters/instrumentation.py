"""Spans for the stores' clients, installed by runtime/tracing.py when tracing is on (entry point group
`scaigrid.instrumentation`, setup.py): PostgreSQL (psycopg2, under SQLAlchemy: OpenTelemetry's SQLAlchemy
instrumentation refuses SQLAlchemy 2.1) and webhooks (httpx) with OpenTelemetry's own instrumentations; Bolt (the
knowledge graph) by hand, which has none; Redis by hand, since it is on every request's path (admission) and
OpenTelemetry's instrumentation cost ~90 µs CPU a command there (measured beside these spans, ~20: it builds its
attributes and a sanitised statement on each call, under wrapt); and the upstreams' HTTP too, in their adapter
(adapters/upstream/openai_compatible.py), where urllib3's instrumentation cost too much on the hot path.

URLs in spans follow the logs' rule (adapters/upstream/redact.py): scheme://host[:port] only, since an upstream's
base URL or a webhook's query string may carry a key. Statements are SQL with placeholders and Redis commands
are named, never their arguments: no values, and no header of a request is recorded.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

from scaigrid.runtime import tracing
from scaigrid.runtime.logs import log

from .upstream.redact import redact_url

_log = logging.getLogger("scaigrid.tracing")
URL_ATTRIBUTES = ("url.full", "http.url")  # the stable name and the old one: whichever the instrumentation set


def _redact_span_url(span, request) -> None:
    """httpx's request hook: its instrumentation records the whole URL, which it cannot filter."""
    if span is not None and span.is_recording():
        for name in URL_ATTRIBUTES:
            span.set_attribute(name, redact_url(request.url))


def instrument() -> None:
    """Install the client instrumentations (once per process, before the stores' clients are made); one that
    refuses the installed library (a version outside its range) is named in one line, the others still run."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.psycopg2 import Psycopg2Instrumentor

    _trace_redis()
    for store, instrumentor, options in (
            # a cursor factory on the real connection (no proxy): pgvector still registers its types on it
            ("postgres", Psycopg2Instrumentor(), {}),
            ("http (webhooks)", HTTPXClientInstrumentor(), {"request_hook": _redact_span_url})):
        instrumentor.instrument(**options)
        if not instrumentor.is_instrumented_by_opentelemetry:
            log(_log, logging.WARNING, "no spans for this store: its instrumentation refused the installed client",
                store=store, instrumentor=type(instrumentor).__name__)


def _trace_redis() -> None:
    """A client span per Redis command and per pipeline (the database semantic conventions' names), under the
    request's span; a command outside any (a background loop's) makes none."""
    import redis
    from opentelemetry.trace import SpanKind

    command, pipeline = redis.Redis.execute_command, redis.client.Pipeline.execute
    if getattr(command, "_scaigrid_traced", False):
        return

    def where(client) -> dict:
        kwargs = client.connection_pool.connection_kwargs
        if "path" in kwargs:
            return {"server.address": kwargs["path"], "network.transport": "unix"}
        return {"server.address": kwargs.get("host", "localhost"), "server.port": kwargs.get("port", 6379)}

    def traced(operation: str, client, batch: int = 0) -> tracing.span:
        attributes = {"db.system.name": "redis", "db.operation.name": operation,
                      "db.namespace": str(client.connection_pool.connection_kwargs.get("db") or 0), **where(client)}
        if batch:
            attributes["db.operation.batch.size"] = batch
        return tracing.span(operation, kind=SpanKind.CLIENT, attributes=attributes)

    def execute_command(self, *args, **options):
        if not tracing.current_span().get_span_context().is_valid:
            return command(self, *args, **options)
        with traced(str(args[0]).upper() if args else "?", self):
            return command(self, *args, **options)

    def execute(self, raise_on_error: bool = True):
        if not self.command_stack or not tracing.current_span().get_span_context().is_valid:
            return pipeline(self, raise_on_error)
        with traced("MULTI" if self.transaction else "PIPELINE", self, len(self.command_stack)):
            return pipeline(self, raise_on_error)

    execute_command._scaigrid_traced = True
    redis.Redis.execute_command, redis.client.Pipeline.execute = execute_command, execute


@contextmanager
def bolt_span(operation: str, server: str) -> Iterator[None]:
    """A client span around one Bolt query (the knowledge graph); nothing at all while tracing is off."""
    if not tracing.on:
        yield
        return
    from opentelemetry.trace import SpanKind

    with tracing.span(f"{operation} graph", kind=SpanKind.CLIENT,
                      attributes={"db.system.name": "neo4j", "db.operation.name": operation,
                                  "server.address": redact_url(server)}):
        yield
