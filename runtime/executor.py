"""The executor: runs a route's steps over the envelope, remote (RPC) or inline, and hands after-steps to the bus."""
from __future__ import annotations

import logging
import time

import eventlet
from eventlet.event import Event
from kombu import Connection
from nameko.amqp.publish import Publisher
from nameko.constants import AMQP_URI_CONFIG_KEY
from nameko.extensions import DependencyProvider
from nameko.rpc import ReplyListener

from . import metrics, tracing
from .after import AfterSteps
from .errors import StepError, StepTimeout, Unavailable, as_step_error
from .graph import Graph, StepSpec
from .graph_check import is_ingress, load_checked
from .inline import INLINE_CONFIG_KEY, InlineHost
from .logs import log
from .remote import SERIALIZER, RemoteCaller, register_process_caller
from .batch import BATCH_ATTR
from .service import after_methods, build_service, service_config
from .settings import DEFAULT_SPOOL_DIR, DEFAULT_SPOOL_MAX_BYTES, Settings
from .streams import CANCEL_EXCHANGE

_log = logging.getLogger("scaigrid.executor")
CANCEL_GRACE_S = 2.0  # how long a timed-out step's late answer (its usage) is awaited after the cancel


class RouteRunner:
    """What a worker sees: run a route, call one 'function.method', check readiness."""

    def __init__(self, graph: Graph, remote: RemoteCaller, inline: dict[str, InlineHost], after: AfterSteps,
                 control: Publisher, amqp_uri: str):
        self.graph = graph
        self.remote = remote
        self.inline = inline
        self.after_steps = after
        self.control = control
        self.amqp_uri = amqp_uri

    def placement(self, function: str) -> str:
        return "inline" if function in self.inline else "remote"

    def call(self, ref: str, *args, timeout: float | None = None, request_id: str | None = None):
        """Call one step or `calls:` edge by name; inline or remote as graph.yaml places it."""
        function, _, method = ref.partition(".")
        timeout = timeout or self.graph.functions[function].timeout
        host = self.inline.get(function)
        if host is not None:
            return host.call(method, args, timeout, {"request_id": request_id})
        return self.remote.call(function, method, args, timeout, {"nameko.request_id": request_id})

    def run_leading(self, route_name: str, envelope: dict, names: frozenset[str]) -> tuple[dict, int]:
        """Run the route's leading steps that are in `names` (the gateway: authentication, before it reads the
        body) and say where `run` goes on. A failure here raises with no after-steps: nothing is handed on for a
        request refused this early."""
        steps = self.graph.routes[route_name].step_specs()
        for i, step in enumerate(steps):
            if step.step not in names:
                return envelope, i
            envelope = self._step(route_name, i, step, envelope)
        return envelope, len(steps)

    def run(self, route_name: str, envelope: dict, start: int = 0) -> dict:
        """Run the route's steps in order from `start` (a step may end it early with `done`), then the
        after-steps."""
        route = self.graph.routes[route_name]
        started = time.perf_counter()
        if route.after and self.after_steps.full:  # serving now would go unrecorded: refuse before any work
            raise Unavailable("the broker has been unreachable too long to record more usage; retry shortly",
                              code="usage_spool_full")
        try:
            for i, step in enumerate(route.step_specs()):
                if i < start or (step.when is not None and not step.applies(envelope)):
                    continue
                envelope = self._step(route_name, i, step, envelope)
                if envelope.get("done"):
                    break
        except StepError as exc:
            envelope["error"] = {"status": exc.status, "code": exc.code, "message": exc.message}
            envelope["context"]["route_ms"] = (time.perf_counter() - started) * 1000
            exc.envelope = envelope
            late_reply = getattr(exc, "late_reply", None)
            if late_reply is not None:
                eventlet.spawn(self._after_late, route_name, envelope, late_reply, tracing.captured())
            else:
                self.after(route_name, envelope)
            raise
        envelope["context"]["route_ms"] = (time.perf_counter() - started) * 1000
        self.after(route_name, envelope)
        return envelope

    def _step(self, route_name: str, index: int, step: StepSpec, envelope: dict) -> dict:
        placement = self.placement(step.function)
        if not tracing.on or placement != "inline":  # a remote step's span is its RPC call's (runtime/remote.py)
            return self._timed_step(route_name, index, step, envelope, placement)
        with tracing.span(step.step, step.function, attributes={"scaigrid.route": route_name}):
            return self._timed_step(route_name, index, step, envelope, placement)

    def _timed_step(self, route_name: str, index: int, step: StepSpec, envelope: dict, placement: str) -> dict:
        started = time.perf_counter()
        try:
            result = self.call(step.step, envelope, timeout=self.graph.timeout_of(step), request_id=envelope["id"])
            if not isinstance(result, dict) or "id" not in result:
                raise StepError(f"step '{step.step}' returned {type(result).__name__}, not the envelope",
                                code="bad_step_result")
        except Exception as exc:
            err = as_step_error(exc)
            envelope["timings"][f"{index}:{step.step}"] = (time.perf_counter() - started) * 1000
            if isinstance(err, StepTimeout):  # nobody waits for that work any more: tell it to stop
                self.cancel(envelope["id"])
            metrics.STEP_ERRORS.labels(route_name, step.step, err.code or "error").inc()
            if err is not exc:
                log(_log, logging.ERROR, "step failed", step=step.step, error=type(exc).__name__,
                    detail=str(exc)[:500])
                raise err from exc
            raise
        elapsed = time.perf_counter() - started
        result["timings"][f"{index}:{step.step}"] = elapsed * 1000
        metrics.STEP_SECONDS.labels(route_name, step.step, placement).observe(elapsed)
        return result

    def _after_late(self, route_name: str, envelope: dict, late_reply, trace_context=None) -> None:
        """After-steps of a route whose remote step timed out: that step, cancelled, still answers with what it
        did until it stopped, and its usage goes on the envelope first, so the work done is accounted for (a
        stream's tokens were delivered). Runs beside the answer, which does not wait for it."""
        result = late_reply(CANCEL_GRACE_S)
        if isinstance(result, dict) and result.get("usage"):
            envelope["usage"] = result["usage"]
        with tracing.attached(trace_context):  # this greenthread started with no trace
            self.after(route_name, envelope)

    def after(self, route_name: str, envelope: dict) -> None:
        """Hand each after-step the envelope as a persistent event, spooled to disk first: it survives a consumer
        that is down, a broker restart and a SIGKILL of this process."""
        for step in self.graph.routes[route_name].after_specs():
            self.after_steps.hand(step.step, envelope)

    def emit(self, step: str, envelope: dict) -> None:
        """Hand an after-step an envelope made off a route's path (graph.yaml `emits:` of the calling function)."""
        self.after_steps.hand(step, envelope)

    def cancel(self, request_id: str) -> None:
        """Ask whichever replica works on this request to stop (steps check between units of work)."""
        try:
            self.control.publish({"rid": request_id}, exchange=CANCEL_EXCHANGE, routing_key="")
        except Exception as exc:  # the caller is answered anyway; the work then runs to its own end
            log(_log, logging.WARNING, "cancel not delivered", error=str(exc)[:300])

    def readiness(self) -> dict[str, int]:
        """Consumers on each remote function's queue this process calls (0 means its steps would fail)."""
        out: dict[str, int] = {}
        with Connection(self.amqp_uri, connect_timeout=2) as conn:
            channel = conn.channel()
            for name in sorted(self.graph.functions):
                # an inline function with replicas hands them what its inline copy does not do (OwnReplicas)
                if not self._targets(name) or (name in self.inline and not self.graph.functions[name].replicas):
                    continue
                try:
                    _, _, consumers = channel.queue_declare(f"rpc-{name}", passive=True)
                except Exception:  # the queue does not exist yet: nobody ever consumed it
                    channel = conn.channel()
                    consumers = 0
                out[name] = consumers
        return out

    def _targets(self, function: str) -> bool:
        return any(s.function == function for r in self.graph.routes.values() for s in r.step_specs())


def batched_steps(graph: Graph, classes: dict[str, type]) -> frozenset[str]:
    """After-steps whose method is `@batch`ed: their consumer takes several envelopes to a message."""
    return frozenset(f"{name}.{method}" for name, cls in classes.items() for method in after_methods(graph, name)
                     if getattr(getattr(cls, method, None), BATCH_ATTR, None))


def executor_of(container) -> "Executor":
    """The Executor among a container's DependencyProviders: other providers of the same function (the gateway's
    routes, the embedding client) build on the graph it loaded and the runner it hands out."""
    return next(d for d in container.dependencies if isinstance(d, Executor))


class Executor(DependencyProvider):
    """Gives a worker a RouteRunner over the graph named in the container config.

    In an ingress function (the gateway) it serves every route; in any other function, its `calls:` edges.
    Inline functions it needs are hosted here, in this process.
    """

    reply_listener = ReplyListener()

    def setup(self):
        config = self.container.config
        self.graph, classes = load_checked(config["SCAIGRID_GRAPH"])
        me = config.get("SCAIGRID_FUNCTION")
        if is_ingress(self.container.service_cls):
            needed = {s.function for r in self.graph.routes.values() for s in r.step_specs() + r.chunk_specs()}
        else:
            needed = {ref.partition(".")[0] for ref in self.graph.functions[me].calls} if me else set()
        settings = Settings(amqp_uri=config[AMQP_URI_CONFIG_KEY], database_url=config["DATABASE_URL"],
                            redis_url=config["REDIS_URL"], models_dir=config["MODELS_DIR"],
                            spool_dir=config.get("SPOOL_DIR", DEFAULT_SPOOL_DIR),
                            spool_max_bytes=int(config.get("SPOOL_MAX_BYTES", DEFAULT_SPOOL_MAX_BYTES)))
        self.hosts = {
            name: InlineHost(build_service(self.graph, name, classes[name]),
                             {**service_config(self.graph, name, settings), INLINE_CONFIG_KEY: True})
            for name in sorted(needed) if self.graph.functions[name].placement == "inline"
        }
        self.after_steps = AfterSteps(config[AMQP_URI_CONFIG_KEY], config.get("SPOOL_DIR", DEFAULT_SPOOL_DIR),
                                      int(config.get("SPOOL_MAX_BYTES", DEFAULT_SPOOL_MAX_BYTES)),
                                      batched_steps(self.graph, classes))
        self.control = Publisher(config[AMQP_URI_CONFIG_KEY], serializer=SERIALIZER, declare=[CANCEL_EXCHANGE])
        self.remote = None
        # nameko starts a container's extensions concurrently: the web server may take a request before this
        # start() is done, so workers wait for it instead of finding no runner
        self._started = Event()

    def start(self):
        self.remote = RemoteCaller(self.container.config, self.reply_listener)
        register_process_caller(self.remote)  # before the inline hosts start: their OwnReplicas use it
        for host in self.hosts.values():
            host.start()
        self.runner = RouteRunner(self.graph, self.remote, self.hosts, self.after_steps, self.control,
                                  self.container.config[AMQP_URI_CONFIG_KEY])
        self.after_steps.start()
        self._started.send(True)

    def stop(self):
        for host in self.hosts.values():
            host.stop()
        self.after_steps.stop(float(self.container.config.get("GRACE_SECONDS", 10)))

    def get_dependency(self, worker_ctx):
        if not self._started.ready():
            self._started.wait()
        return self.runner
