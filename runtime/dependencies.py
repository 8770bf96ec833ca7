"""DependencyProviders every function gets from the runtime: its config, and a log line per step."""
from __future__ import annotations

import logging
import time

from nameko.extensions import DependencyProvider
from nameko.web.handlers import HttpRequestHandler

from .inline import INLINE_CONFIG_KEY
from .logs import bind, current, log
from .remote import process_caller

_log = logging.getLogger("scaigrid.step")


class FunctionConfig(DependencyProvider):
    """The function's `config:` block from graph.yaml, as a dict."""

    def get_dependency(self, worker_ctx):
        return self.container.config.get("SCAIGRID_FUNCTION_CONFIG", {})


def _request_ids(worker_ctx) -> tuple[str | None, str | None]:
    """(our request id, the caller's own x-request-id) of the envelope a step was given."""
    rid, client = worker_ctx.data.get("request_id"), None
    if worker_ctx.args and isinstance(worker_ctx.args[0], dict):
        rid = rid or worker_ctx.args[0].get("id")
        client = worker_ctx.args[0].get("client_request_id")
    return rid, client


class StepLog(DependencyProvider):
    """Binds request id, function and step to the worker's log lines and logs each step with its timing."""

    def worker_setup(self, worker_ctx):
        rid, client = _request_ids(worker_ctx)
        bind(request_id=rid, client_request_id=client, function=worker_ctx.service_name,
             step=f"{worker_ctx.service_name}.{worker_ctx.entrypoint.method_name}", started=time.perf_counter())

    def worker_result(self, worker_ctx, result=None, exc_info=None):
        if isinstance(worker_ctx.entrypoint, HttpRequestHandler):
            return  # the gateway logs its own request line
        ms = (time.perf_counter() - getattr(current, "started", time.perf_counter())) * 1000
        if exc_info is None:
            if _log.isEnabledFor(logging.INFO):
                log(_log, logging.INFO, "step done", ms=round(ms, 3), ok=True)
        else:
            log(_log, logging.INFO, "step raised", ms=round(ms, 3), ok=False,
                error=type(exc_info[1]).__name__, detail=str(exc_info[1])[:300])


def hands_on(config: dict) -> bool:
    """Whether this container is a copy hosted inline in a caller's process while its function also has replicas
    (graph.yaml `placement: inline` with `replicas` > 0): such a copy does in-process what is cheap and hands the
    rest to the replicas (OwnReplicas); it should load nothing only they use."""
    return bool(config.get(INLINE_CONFIG_KEY)) and int(config.get("SCAIGRID_REPLICAS", 0)) > 0


class Replicas:
    """A function's own remote replicas, as one of its copies sees them: `forward` where the copy hands work on
    (see hands_on), `call` to do it."""

    def __init__(self, function: str, forward: bool, timeout: float):
        self.function = function
        self.forward = forward
        # under the inline copy's own timeout, so the replica's answer (or its late reply, which bills the work
        # done) is what the caller hears, not the inline step's timer
        self.timeout = max(timeout - 1.0, timeout * 0.9)

    def call(self, method: str, *args, request_id: str | None = None):
        return process_caller().call(self.function, method, args, self.timeout, {"nameko.request_id": request_id})


class OwnReplicas(DependencyProvider):
    """Hands a worker its function's Replicas (see there)."""

    def setup(self):
        config = self.container.config
        self.replicas = Replicas(config.get("SCAIGRID_FUNCTION") or self.container.service_name,
                                 hands_on(config),
                                 float(config.get("SCAIGRID_TIMEOUT", 30)))

    def get_dependency(self, worker_ctx):
        return self.replicas
