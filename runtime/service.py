"""Turn a graph function into a runnable nameko service class and its container config."""
from __future__ import annotations

from kombu import Queue
from nameko.constants import AMQP_URI_CONFIG_KEY, SERIALIZER_CONFIG_KEY, WEB_SERVER_CONFIG_KEY
from nameko.events import SERVICE_POOL, event_handler
from nameko.extensions import ENTRYPOINT_EXTENSIONS_ATTR, register_entrypoint
from nameko.standalone.events import get_event_exchange

from .batch import BATCH_ATTR, BatchConsumer

from .dependencies import StepLog
from .graph import Graph
from .metrics import CallMetrics
from .remote import SERIALIZER
from .settings import Settings
from .tracing import StepSpan

EVENT_SOURCE = "scaigrid"


def after_event_type(step: str) -> str:
    return f"after.{step}"


def after_queue(step: str) -> Queue:
    """The durable queue of an after-step, declared exactly as nameko's reliable event_handler declares it."""
    event_type = after_event_type(step)
    return Queue(f"evt-{EVENT_SOURCE}-{event_type}--{step}", exchange=get_event_exchange(EVENT_SOURCE, {}),
                 routing_key=event_type, durable=True, auto_delete=False)


def after_methods(graph: Graph, function: str) -> list[str]:
    """Methods of `function` that some route runs as an after-step."""
    return sorted({s.method for r in graph.routes.values() for s in r.after_specs() if s.function == function})


def _with_after_entrypoint(function: str, method: str, original):
    def handler(self, *args, **kwargs):
        return original(self, *args, **kwargs)

    handler.__name__ = handler.__qualname__ = method
    handler.__doc__ = original.__doc__
    # keep the method's own entrypoints (e.g. @rpc) and add the durable event consumer
    setattr(handler, ENTRYPOINT_EXTENSIONS_ATTR, set(getattr(original, ENTRYPOINT_EXTENSIONS_ATTR, ())))
    batched = getattr(original, BATCH_ATTR, None)
    if batched:
        register_entrypoint(handler, BatchConsumer(after_queue(f"{function}.{method}"), *batched))
        return handler
    return event_handler(EVENT_SOURCE, after_event_type(f"{function}.{method}"),
                         handler_type=SERVICE_POOL, reliable_delivery=True)(handler)


def build_service(graph: Graph, function: str, cls: type) -> type:
    """A subclass named after the graph function (its queue name), with step logging, call metrics and after-step
    consumers."""
    attrs = {"name": function, "_scaigrid_step_log": StepLog(), "_scaigrid_call_metrics": CallMetrics(),
             "_scaigrid_step_span": StepSpan()}
    for method in after_methods(graph, function):
        attrs[method] = _with_after_entrypoint(function, method, getattr(cls, method))
    return type(cls.__name__, (cls,), attrs)


def service_config(graph: Graph, function: str, settings: Settings) -> dict:
    """The nameko container config of one function."""
    spec = graph.functions[function]
    return {
        AMQP_URI_CONFIG_KEY: settings.amqp_uri,
        SERIALIZER_CONFIG_KEY: SERIALIZER,
        "max_workers": spec.pool,
        WEB_SERVER_CONFIG_KEY: spec.config.get("address") or settings.http_address,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "MODELS_DIR": settings.models_dir,
        "SPOOL_DIR": settings.spool_dir,
        "SPOOL_MAX_BYTES": settings.spool_max_bytes,
        "GRACE_SECONDS": settings.grace_seconds,
        "SCAIGRID_GRAPH": str(graph.file),
        "SCAIGRID_FUNCTION": function,
        "SCAIGRID_REPLICAS": spec.replicas,
        "SCAIGRID_TIMEOUT": spec.timeout,
        "SCAIGRID_FUNCTION_CONFIG": spec.config,
    }
