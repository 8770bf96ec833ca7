"""Spans for the stores' clients, installed by runtime/tracing.py when tracing is on (entry point group
`scaigrid.instrumentation`, setup.py): PostgreSQL (SQLAlchemy), Redis, outgoing HTTP (urllib3: the upstreams;
httpx: webhooks) with OpenTelemetry's own instrumentations, and Bolt (the knowledge graph) by hand, which has none.

URLs in spans follow the logs' rule (adapters/upstream/redact.py): scheme://host[:port] only, since an upstream's
base URL or a webhook's query string may carry a key. Statements are SQL with placeholders and Redis commands
with their arguments as `?`: no values, and no header of a request is recorded.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from scaigrid.runtime import tracing

from .upstream.redact import redact_url

URL_ATTRIBUTES = ("url.full", "http.url")  # the stable name and the old one: whichever the instrumentation set


def _redact_span_url(span, request) -> None:
    """httpx's request hook: its instrumentation records the whole URL, which it cannot filter."""
    if span is not None and span.is_recording():
        for name in URL_ATTRIBUTES:
            span.set_attribute(name, redact_url(request.url))


def instrument() -> None:
    """Install the client instrumentations (once per process, before the stores' clients are made)."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
    from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor

    SQLAlchemyInstrumentor().instrument()
    RedisInstrumentor().instrument()
    URLLib3Instrumentor().instrument(url_filter=redact_url)
    HTTPXClientInstrumentor().instrument(request_hook=_redact_span_url)


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
