"""The SDK side of runtime/tracing.py, imported only when tracing is on: the sampler, the span processor that names
each span's function, and the discovery of client instrumentations."""
from __future__ import annotations

import logging
from importlib.metadata import entry_points
from types import SimpleNamespace
from typing import Callable

from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult, _get_from_env_or_default

from . import logs
from .tracing import FUNCTION, SCOPE

_log = logging.getLogger("scaigrid.tracing")
INSTRUMENTATION_GROUP = "scaigrid.instrumentation"  # setup.py: what instruments the stores' clients


class OwnRoots(Sampler):
    """The configured sampler (`OTEL_TRACES_SAMPLER`), except that a trace starts only at a span of ours: a client
    library's span with no parent (a background loop's Redis call, a pool's ping) would be a trace of one span."""

    def __init__(self, inner: Sampler):
        self.inner = inner

    @classmethod
    def from_env(cls) -> "OwnRoots":
        return cls(_get_from_env_or_default())

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None,
                      trace_state=None) -> SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        if not parent.is_valid and not (attributes and FUNCTION in attributes):
            return SamplingResult(Decision.DROP)
        return self.inner.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"OwnRoots{{{self.inner.get_description()}}}"


class FunctionAttribute(SpanProcessor):
    """`scaigrid.function` on every span: a client library's span gets the function whose worker made it."""

    def __init__(self, function: Callable[[], str]):
        self.function = function

    def on_start(self, span, parent_context=None) -> None:
        scope = span.instrumentation_scope
        if scope is None or scope.name != SCOPE:  # ours name it at creation (a lookup in the span's attributes,
            span.set_attribute(FUNCTION, self.function())  # a Mapping, cost 90 µs a span: measured)


def real_span_locks() -> None:
    """Spans, their attributes and events take OS locks again where eventlet made them green ones: four green
    locks were a fifth of a span's cost, and no code holding one of these ever yields (no I/O under them), so no
    two greenthreads can meet at one. Only these modules' `threading`, which they use for Lock alone."""
    import eventlet.patcher
    from opentelemetry import attributes
    from opentelemetry.sdk import trace as sdk_trace, util

    if not eventlet.patcher.is_monkey_patched("thread"):
        return
    real = SimpleNamespace(Lock=eventlet.patcher.original("threading").Lock)
    for module in (attributes, util, sdk_trace):
        module.threading = real


def instrument_clients() -> None:
    """Run every registered instrumentation (PostgreSQL, Redis, outgoing HTTP); one that fails says so and the
    others still run: a missing span is no reason not to serve."""
    for hook in entry_points(group=INSTRUMENTATION_GROUP):
        try:
            hook.load()()
        except Exception as exc:  # noqa: BLE001 -- any failure of a third-party instrumentor
            logs.log(_log, logging.WARNING, "instrumentation not installed", name=hook.name, error=str(exc)[:300])
