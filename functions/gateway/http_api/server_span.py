"""The gateway's server span: the root of a request's trace, continuing the caller's W3C `traceparent`, open until
the answer is written (a stream's last chunk, or the client hanging up), and named in `traceparent` of the answer."""
from __future__ import annotations

from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Status, StatusCode
from werkzeug.wrappers import Request, Response

from scaigrid.runtime import tracing


def sent_context(environ: dict) -> dict:
    """The propagators' headers the caller sent (`traceparent`, `tracestate`, `baggage`), read from the WSGI
    environ: werkzeug's header view cost 9 µs a request to say most have none."""
    return {name: environ[key] for name in propagate.get_global_textmap().fields
            if (key := "HTTP_" + name.upper().replace("-", "_")) in environ}


def open_span(request: Request):
    """(span, context token): the server span, current in this greenthread from here on."""
    span = tracing.start(request.method, "gateway", SpanKind.SERVER,
                         parent=tracing.extract(sent_context(request.environ)),
                         attributes={"http.request.method": request.method, "url.path": request.path,
                                     "url.scheme": request.scheme,
                                     "user_agent.original": request.headers.get("User-Agent", "")[:200]})
    return span, otel_context.attach(tracing.in_span(span))


def name_route(route, method: str, request_id: str) -> None:
    """Name the current server span after the route's endpoint (`POST /v1/chat/completions`), as HTTP's
    conventions ask: a template, not the path with its ids; and keep the request's id on it."""
    endpoint = next((e for e in route.http if e.split(" ", 1)[0] == method), None)
    span = tracing.current_span()
    span.set_attribute("scaigrid.request_id", request_id)
    if endpoint is not None:
        span.update_name(endpoint)
        span.set_attribute("http.route", endpoint.split(" ", 1)[1])


def close_span(span, token, response: Response) -> Response:
    """Leave the span's context in this greenthread, say its id in the answer, and end it once the answer is
    written (werkzeug's close callbacks run when the server closed the body: a stream's end included)."""
    status = response.status_code
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))
    response.headers["traceparent"] = tracing.traceparent()
    otel_context.detach(token)
    response.call_on_close(span.end)
    return response
