"""Spans for the stores' clients, installed by runtime/tracing.py when tracing is on (entry point group
`scaigrid.instrumentation`, setup.py): PostgreSQL (psycopg2, under SQLAlchemy: OpenTelemetry's SQLAlchemy
instrumentation refuses SQLAlchemy 2.1), Redis and webhooks (httpx) with OpenTelemetry's own instrumentations;
Bolt (the knowledge graph) by hand, which has none, and the upstreams' HTTP too, in their adapter
(adapters/upstream/openai_compatible.py), where urllib3's instrumentation cost too much on the hot path.

URLs in spans follow the logs' rule (adapters/upstream/redact.py): scheme://host[:port] only, since an upstream's
base URL or a webhook's query string may carry a key. Statements are SQL with placeholders and Redis commands
with their arguments as `?`: no values, and no header of a request is recorded.
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
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    for store, instrumentor, options in (
            # a cursor factory on the real connection (no proxy): pgvector still registers its types on it
            ("postgres", Psycopg2Instrumentor(), {}),
            ("redis", RedisInstrumentor(), {}),
            ("http (webhooks)", HTTPXClientInstrumentor(), {"request_hook": _redact_span_url})):
        instrumentor.instrument(**options)
        if not instrumentor.is_instrumented_by_opentelemetry:
            log(_log, logging.WARNING, "no spans for this store: its instrumentation refused the installed client",
                store=store, instrumentor=type(instrumentor).__name__)


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
