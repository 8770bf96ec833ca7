"""The gateway's DependencyProviders: its routing table (graph.yaml's `http:` endpoints) and both APIs' OpenAPI
documents, built once per process from the graph the Executor loaded."""
from __future__ import annotations

from nameko.extensions import DependencyProvider
from werkzeug.exceptions import MethodNotAllowed, NotFound as NoRoute
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request

from scaigrid.runtime.errors import NotFound
from scaigrid.runtime.executor import executor_of

from .http_api.openapi import document as openapi_document
from .http_api.openapi_v1 import openai_document


class HttpRoutes:
    def __init__(self, graph):
        self.graph = graph
        self.map = Map([Rule(path, methods=methods.split(","), endpoint=name)
                        for name, route in graph.routes.items()
                        for methods, _, path in (endpoint.partition(" ") for endpoint in route.http)])
        self._documents: dict[str, dict] = {}

    def match(self, request: Request) -> tuple[str, dict]:
        """(route name, path values); an unknown path or method is a 404 that says which."""
        try:
            return self.map.bind_to_environ(request.environ).match()
        except MethodNotAllowed:
            raise NotFound(f"{request.method} is not served at {request.path}", code="method_not_allowed") from None
        except NoRoute:
            raise NotFound(f"no route serves {request.method} {request.path}; see graph.yaml",
                           code="unknown_route") from None

    def openapi(self, api: str = "native") -> dict:
        """The native (`native`) or OpenAI-compatible (`openai`) API's document: built on first ask, then kept
        (graph.yaml is read once, at start)."""
        if api not in self._documents:
            self._documents[api] = (openapi_document if api == "native" else openai_document)(self.graph)
        return self._documents[api]


class HttpRoutesProvider(DependencyProvider):
    def setup(self):
        # the Executor loaded and checked the graph in its own setup; nameko sets every extension up before it
        # starts any, so start() finds it there
        self.routes: HttpRoutes | None = None

    def start(self):
        self.routes = HttpRoutes(executor_of(self.container).graph)

    def get_dependency(self, worker_ctx):
        return self.routes
