"""DependencyProviders every function gets from the runtime: its config, and a log line per step."""
from __future__ import annotations

import logging
import time

from nameko.extensions import DependencyProvider
from nameko.web.handlers import HttpRequestHandler

from .logs import bind, current, log

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
