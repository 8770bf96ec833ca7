"""The gateway: HTTP in, the route's steps run by the executor, HTTP out. Health, readiness and metrics."""
from __future__ import annotations

import logging
import re
import time
import uuid

from nameko.web.handlers import http
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import MethodNotAllowed, NotFound as NoRoute
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from scaigrid.runtime import metrics
from scaigrid.runtime.envelope import new_envelope
from scaigrid.runtime.errors import NotFound, StepError, Unavailable
from scaigrid.runtime.executor import Executor
from scaigrid.runtime.lifecycle import inflight
from scaigrid.runtime.logs import bind, log

from .http_api import HANDLERS
from .http_api.responses import error_response, json_response

_log = logging.getLogger("scaigrid.gateway")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_of(request: Request) -> str:
    """The caller's x-request-id when it is sane, else a fresh one."""
    given = request.headers.get("x-request-id", "")
    return given if REQUEST_ID.match(given) else f"req_{uuid.uuid4().hex}"


class Gateway:
    """HTTP ingress for every route in graph.yaml that names an `http:` endpoint."""

    name = "gateway"
    routes = Executor()
    _url_map: Map | None = None

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

    @http("GET", "/metrics")
    def metrics(self, request: Request) -> Response:
        return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)

    @http("GET,POST,PUT,PATCH,DELETE", "/<path:path>")
    def dispatch(self, request: Request, path: str) -> Response:
        """Every graph route: parse with the route's handler, run the steps, render the envelope."""
        started = time.perf_counter()
        rid = request_id_of(request)
        bind(request_id=rid, function=self.name, step=None)
        headers = {"x-request-id": rid}
        route_name, status = "-", 500
        try:
            if inflight.draining:
                headers["Connection"] = "close"
                raise Unavailable("this gateway replica is shutting down; retry", code="shutting_down")
            with inflight.track():
                route_name, path_values = self._match(request)
                route = self.routes.graph.routes[route_name]
                handler = HANDLERS[route.handler]
                envelope = new_envelope(route_name, handler.parse(request, path_values), request_id=rid)
                envelope = self.routes.run(route_name, envelope)
                response = handler.render(envelope, headers)
        except StepError as exc:
            response = error_response(exc, headers)
        status = response.status_code
        elapsed = time.perf_counter() - started
        metrics.REQUEST_SECONDS.labels(route_name, str(status)).observe(elapsed)
        log(_log, logging.INFO, "request", method=request.method, path=request.path, route=route_name,
            status=status, ms=round(elapsed * 1000, 3))
        return response

    def _match(self, request: Request) -> tuple[str, dict]:
        if Gateway._url_map is None:
            rules = []
            for name, route in self.routes.graph.routes.items():
                for endpoint in route.http:
                    methods, _, path = endpoint.partition(" ")
                    rules.append(Rule(path, methods=methods.split(","), endpoint=name))
            Gateway._url_map = Map(rules)
        try:
            return Gateway._url_map.bind_to_environ(request.environ).match()
        except MethodNotAllowed:
            raise NotFound(f"{request.method} is not served at {request.path}", code="method_not_allowed") from None
        except NoRoute:
            raise NotFound(f"no route serves {request.method} {request.path}; see graph.yaml",
                           code="unknown_route") from None
