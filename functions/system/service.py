"""The system function: describes the running graph (functions, replicas, routes) through the native API."""
from __future__ import annotations

from importlib.metadata import version

from nameko.rpc import rpc

from scaigrid.runtime.dependencies import FunctionConfig
from scaigrid.runtime.errors import Forbidden
from scaigrid.runtime.executor import Executor


class System:
    """Facts about this deployment that an operator or a client asks for."""

    name = "system"
    config = FunctionConfig()
    graph = Executor()

    @rpc
    def describe(self, envelope: dict) -> dict:
        """The graph as served: each function's placement and replicas, each route's endpoints and steps.
        Platform admins only: it is the deployment's map."""
        if (envelope.get("principal") or {}).get("role") != "platform-admin":
            raise Forbidden("only a platform admin may see the deployment's graph", code="platform_admin_only")
        graph = self.graph.graph
        envelope["response"] = {
            "version": version("scaigrid"),
            "functions": {
                name: {"placement": fn.placement, "replicas": fn.replicas, "pool": fn.pool, "timeout": fn.timeout}
                for name, fn in graph.functions.items()
            },
            "routes": {
                name: {"http": r.http, "steps": [s.step for s in r.step_specs()],
                       "after": [s.step for s in r.after_specs()]}
                for name, r in graph.routes.items()
            },
        }
        return envelope
