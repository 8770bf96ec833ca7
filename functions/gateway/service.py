"""The gateway: HTTP in, the route's steps run by the executor, HTTP out. Health, readiness and metrics."""
from __future__ import annotations

import logging
import re
import time
import uuid

import eventlet
from eventlet.queue import Empty
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.wrappers import Request, Response

from scaigrid.runtime import metrics, tracing
from scaigrid.runtime.envelope import new_envelope
from scaigrid.runtime.errors import StepError, StepTimeout, Unavailable, as_step_error
from scaigrid.runtime.executor import Executor
from scaigrid.runtime.lifecycle import inflight
from scaigrid.runtime.logs import bind, log
from scaigrid.runtime.streams import ChunkListener
from scaigrid.runtime.web import http

from ..shared.access import require_model
from .dependencies import HttpRoutesProvider
from .http_api import HANDLERS
from .http_api.body import read_body
from .http_api.disconnect import watch_disconnect
from .http_api.json_route import answer_of
from .http_api.docs_page import docs_asset, docs_page
from .http_api.responses import json_response
from .http_api.server_span import close_span, name_route, open_span

_log = logging.getLogger("scaigrid.gateway")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


# Run before the body is read: nothing of a request is read or parsed until its key is known good, and a caller
# who is nobody gets no after-steps (no ledger row, no series).
AUTHENTICATE = frozenset({"auth.authenticate"})


def new_request_id() -> str:
    """The id that keys billing, limits, streams and cancellation: always ours, never the caller's."""
    return f"req_{uuid.uuid4().hex}"


def client_request_id(request: Request) -> str | None:
    """The caller's own x-request-id when it is sane: kept as their reference (echoed, logged, stored), never a key."""
    given = request.headers.get("x-request-id", "")
    return given if REQUEST_ID.match(given) else None


def credentials(request: Request) -> dict:
    """The key (a bearer token, or `x-api-key` as Anthropic's SDKs send it), kept apart from the request so that
    only auth.authenticate ever sees it."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    key = token.strip() if scheme.lower() == "bearer" else ""
    key = key or request.headers.get("x-api-key", "").strip()
    return {"api_key": key} if key else {}


def server_timing(timings: dict[str, float]) -> str:
    """Per-step durations as a Server-Timing header (browsers' devtools and bench/hops.py read it)."""
    parts = []
    for key, ms in timings.items():
        index, _, step = key.partition(":")
        parts.append(f's{index}_{step.replace(".", "_")};dur={ms:.3f};desc="{step}"')
    return ", ".join(parts)


MODEL_FUNCTION = "inference"
DEFAULT_HANDLER = HANDLERS["json"]  # errors before a route is known (no such path): OpenAI's shape


def overhead_ms(started: float, timings: dict[str, float]) -> str:
    """What ScaiGrid added to the model's own time: the whole request in this process minus the model steps."""
    model = sum(ms for key, ms in timings.items() if key.partition(":")[2].startswith(MODEL_FUNCTION + "."))
    return f"{max(0.0, (time.perf_counter() - started) * 1000 - model):.3f}"


class Gateway:
    """HTTP ingress for every route in graph.yaml that names an `http:` endpoint."""

    name = "gateway"
    routes = Executor()
    chunks = ChunkListener()
    http_routes = HttpRoutesProvider()

    @http("GET", "/healthz")
    def healthz(self, request: Request) -> Response:
        """Liveness: the process serves HTTP (503 while draining, so load balancers move on)."""
        if inflight.draining:
            return json_response({"status": "draining"}, 503)
        return json_response({"status": "ok"})

    @http("GET", "/readyz")
    def readyz(self, request: Request) -> Response:
        """Readiness: every remote function this gateway calls has at least one replica consuming its queue."""
        consumers = self.routes.readiness()
        ready = not inflight.draining and all(consumers.values())
        return json_response({"ready": ready, "consumers": consumers}, 200 if ready else 503)

    @http("GET", "/api/v1/openapi.json")
    def openapi(self, request: Request) -> Response:
        """The native API's OpenAPI 3.1 document, generated from graph.yaml and the operations' models."""
        return json_response(self.http_routes.openapi())

    @http("GET", "/v1/openapi.json")
    def openapi_v1(self, request: Request) -> Response:
        """The OpenAI-compatible API's OpenAPI 3.1 document, from graph.yaml's `openai` routes and their models."""
        return json_response(self.http_routes.openapi("openai"))

    @http("GET", "/api/v1/docs")
    def docs(self, request: Request) -> Response:
        """A browsable page for the OpenAPI document; its assets are served from a package, no CDN."""
        return Response(docs_page(), mimetype="text/html")

    @http("GET", "/api/v1/docs/assets/<name>")
    def docs_asset(self, request: Request, name: str) -> Response:
        return docs_asset(name)

    @http("GET", "/metrics")
    def metrics(self, request: Request) -> Response:
        """Prometheus metrics of every replica sharing this one's multiprocess folder (its supervisor's: every
        function under `scaigrid up`, the gateway's own replicas in a pod), else of this process."""
        registry = metrics.host_registry()
        return Response(generate_latest(registry) if registry else generate_latest(), mimetype=CONTENT_TYPE_LATEST)

    @http("GET,POST,PUT,PATCH,DELETE", "/<path:path>")
    def dispatch(self, request: Request, path: str) -> Response:
        """Every graph route: parse with the route's handler, run the steps, render the envelope."""
        if not tracing.on:
            return self._dispatch(request)
        span, token = open_span(request)
        try:
            response = self._dispatch(request)
        except BaseException:  # _dispatch answers every error itself: this is a kill, the span must end anyway
            close_span(span, token, Response(status=500))
            raise
        return close_span(span, token, response)

    def _dispatch(self, request: Request) -> Response:
        started = time.perf_counter()
        rid, client_rid = new_request_id(), client_request_id(request)
        bind(request_id=rid, client_request_id=client_rid, function=self.name, step=None)
        headers = {"x-request-id": rid}
        if client_rid:
            headers["x-client-request-id"] = client_rid
        route_name, status, watcher, handler = "-", 500, None, None
        try:
            if inflight.draining:
                headers["Connection"] = "close"
                raise Unavailable("this gateway replica is shutting down; retry", code="shutting_down")
            with inflight.track():
                route_name, path_values = self.http_routes.match(request)
                route = self.routes.graph.routes[route_name]
                if tracing.on:
                    name_route(route, request.method, rid)
                handler = HANDLERS[route.handler]
                if handler.id_header:
                    headers[handler.id_header] = rid
                envelope = new_envelope(route_name, {"path": path_values}, request_id=rid,
                                        client_request_id=client_rid, secrets=credentials(request))
                envelope, first = self.routes.run_leading(route_name, envelope, AUTHENTICATE)
                read_body(request, route.max_body or handler.max_body)
                envelope["request"] = parsed = handler.parse(request, route_name, path_values)
                if envelope.get("principal"):  # the body names the model: the key's allow-list applies now
                    require_model(envelope["principal"].get("models"), parsed.get("model"))
                if handler.wants_stream(parsed):
                    response = self._stream(request, route_name, handler, envelope, headers, first)
                else:
                    watcher = eventlet.spawn(watch_disconnect, request.environ,
                                             lambda: self.chunks.cancel(envelope["id"]))
                    envelope = self.routes.run(route_name, envelope, first)
                    headers.update(envelope["context"].get("headers", {}))
                    headers["Server-Timing"] = server_timing(envelope["timings"])
                    headers["x-scaigrid-overhead-ms"] = overhead_ms(started, envelope["timings"])
                    response = handler.render(envelope, headers)
                    # stopped once the answer is written, not before: killing it costs a trip through the hub,
                    # where the after-step spool's delivery would run ahead of the answer (~0.5 ms, bench/gateway.py)
                    response.call_on_close(watcher.kill)
                    watcher = None
        except StepError as exc:
            # steps may set answer headers even when the route fails (x-ratelimit-* on a 429)
            headers.update((getattr(exc, "envelope", None) or {}).get("context", {}).get("headers", {}))
            response = (handler or DEFAULT_HANDLER).render_error(exc, headers)
        except Exception as exc:  # a bug must still answer in the API's format, with the id to find it by
            log(_log, logging.ERROR, "unhandled error in the gateway", error=repr(exc)[:500], exc_info=True)
            response = (handler or DEFAULT_HANDLER).render_error(as_step_error(exc), headers)
        if watcher is not None:  # the route failed: the error is the answer, nothing is left to cancel
            watcher.kill()
        status = response.status_code
        elapsed = time.perf_counter() - started
        metrics.REQUEST_SECONDS.labels(route_name, str(status)).observe(elapsed)
        log(_log, logging.INFO, "request", method=request.method, path=request.path, route=route_name,
            status=status, ms=round(elapsed * 1000, 3))
        return response

    def _stream(self, request: Request, route_name: str, handler, envelope: dict, headers: dict,
                start: int = 0) -> Response:
        """Run the route in its own greenthread; relay the chunks it publishes to this process as SSE."""
        rid = envelope["id"]
        chunks = self.chunks.open(rid)
        envelope["context"]["stream"] = {"reply_to": self.chunks.queue_name}
        wait = self.routes.graph.route_timeout(route_name)
        trace_context = tracing.captured()  # a new greenthread starts outside the request's trace

        def run_route():
            bind(request_id=rid, client_request_id=envelope.get("client_request_id"), function=self.name, step=None)
            try:
                with tracing.attached(trace_context):
                    chunks.put(("done", self.routes.run(route_name, envelope, start)))
            except Exception as exc:
                chunks.put(("error", as_step_error(exc)))
            finally:
                inflight.leave()  # the stream counts as in flight until its route is over

        inflight.enter()
        eventlet.spawn(run_route)
        try:
            first = chunks.get(timeout=wait)
        except Empty:  # nothing came in the route's whole time: stop the work, free the entry, say so
            first = ("error", StepTimeout(f"no answer from route '{route_name}' in {wait:g}s"))
            self.chunks.cancel(rid)
        if first[0] == "error":  # failed before streaming anything: a plain error answer
            self.chunks.close(rid)
            raise first[1]
        request.environ["eventlet.minimum_write_chunk_size"] = 0  # else eventlet buffers 4 KiB
        headers.update(envelope["context"].get("headers", {}))  # set by steps before the first chunk

        renderer = handler.stream_renderer(envelope)

        def body():
            item, received, expected, finished, done = first, 0, None, False, None
            try:
                while True:
                    # what has arrived already goes out in one write (several chunks gather under load or from a
                    # fast producer: one send instead of one each); nothing is waited for, so no chunk is held back
                    out: list[bytes] = []
                    while item is not None:
                        kind, value = item
                        if kind == "chunk":
                            received += 1
                            out += map(renderer.render_chunk, self._chunk_steps(route_name, envelope, value["data"]))
                        elif kind == "done":
                            done = value
                            expected = value["context"]["stream"].get("sent", 0)
                            if expected == 0 and received == 0 and value.get("response") is not None:
                                out.append(renderer.render_chunk(answer_of(value)))  # answered without streaming
                        else:  # failed or timed out mid-stream: said in the stream; finally cancels what still runs
                            yield b"".join([*out, renderer.render_stream_error(value)])
                            return
                        if expected is not None and received >= expected:
                            out += map(renderer.render_chunk, self._chunk_steps(
                                route_name, envelope, None, final=True, usage=done.get("usage")))
                            yield b"".join([*out, renderer.render_end(done)])
                            finished = True
                            return
                        item = chunks.get_nowait() if chunks.qsize() else None
                    if out:
                        yield b"".join(out)
                    try:
                        item = chunks.get(timeout=wait)
                    except Empty:
                        item = ("error", StepTimeout(f"the stream of route '{route_name}' stalled for {wait:g}s"))
            finally:
                self.chunks.close(rid)
                if not finished:  # the client left (or we timed out): stop the generation
                    self.chunks.cancel(rid)

        def on_close():  # also when the client left before the body began: a generator never started has no
            if rid in self.chunks.streams:  # finally to run, so the entry would stay and the work go on
                self.chunks.close(rid)
                self.chunks.cancel(rid)

        response = Response(body(), status=200, headers={**headers, "Cache-Control": "no-cache"},
                            mimetype="text/event-stream")
        response.call_on_close(on_close)
        return response

    def _chunk_steps(self, route_name: str, envelope: dict, data, final: bool = False, usage=None) -> list:
        """A streamed chunk through the route's `chunks:` steps (inline); they may hold text back and release it
        later, at the latest on the final call (no data, the route's usage). The envelope is the one the inline
        steps of the route wrote their state into."""
        steps = self.routes.graph.routes[route_name].chunk_specs()
        if not steps:
            return [data] if data is not None else []
        pieces = [data] if data is not None else []
        for step in steps:  # each step's output feeds the next; on the final call each also flushes
            out: list = []
            calls = [(piece, False) for piece in pieces] + ([(None, True)] if final else [])
            for piece, last in calls:
                chunk = {"id": envelope["id"], "tenant": envelope.get("tenant"), "context": envelope["context"],
                         "data": piece, "final": last, **({"usage": usage} if last else {})}
                out += self.routes.call(step.step, chunk, request_id=envelope["id"]).get("emit", [])
            pieces = out
        return pieces
