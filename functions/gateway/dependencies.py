"""The gateway's DependencyProviders: its routing table (graph.yaml's `http:` endpoints) and the native API's
OpenAPI document, built once per process from the graph the Executor loaded."""
from __future__ import annotations

from nameko.extensions import DependencyProvider
from werkzeug.exceptions import MethodNotAllowed, NotFound as NoRoute
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request

from scaigrid.runtime.errors import NotFound
from scaigrid.runtime.executor import Executor

from .http_api.openapi import document as openapi_document


class HttpRoutes:
    def __init__(self, graph):
        self.graph = graph
        self.map = Map([Rule(path, methods=methods.split(","), endpoint=name)
                        for name, route in graph.routes.items()
                        for methods, _, path in (endpoint.partition(" ") for endpoint in route.http)])
        self._openapi: dict | None = None

    def match(self, request: Request) -> tuple[str, dict]:
        """(route name, path values); an unknown path or method is a 404 that says which."""
        try:
            return self.map.bind_to_environ(request.environ).match()
        except MethodNotAllowed:
            raise NotFound(f"{request.method} is not served at {request.path}", code="method_not_allowed") from None
        except NoRoute:
            raise NotFound(f"no route serves {request.method} {request.path}; see graph.yaml",
                           code="unknown_route") from None

    def openapi(self) -> dict:
        """The native API's document: built on first ask (it imports every operation's models)."""
        if self._openapi is None:
            self._openapi = openapi_document(self.graph)
        return self._openapi


class HttpRoutesProvider(DependencyProvider):
    def setup(self):
        # the Executor loaded and checked the graph in its own setup; nameko sets every extension up before it
        # starts any, so start() finds it there
        self.routes: HttpRoutes | None = None

    def start(self):
        executor = next(d for d in self.container.dependencies if isinstance(d, Executor))
        self.routes = HttpRoutes(executor.graph)

    def get_dependency(self, worker_ctx):
        return self.routes
