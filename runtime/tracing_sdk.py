"""The SDK side of runtime/tracing.py, imported only when tracing is on: the configured sampler and the discovery of
client instrumentations."""
from __future__ import annotations

import logging
from importlib.metadata import entry_points

from opentelemetry.sdk.trace.sampling import _get_from_env_or_default

from . import logs

_log = logging.getLogger("scaigrid.tracing")
INSTRUMENTATION_GROUP = "scaigrid.instrumentation"  # setup.py: what instruments the stores' clients


def configured_sampler():
    """The sampler `OTEL_TRACES_SAMPLER` (and its argument) names, as the SDK reads them; asked by
    runtime/span_recorder.py for a trace's first span in this process."""
    return _get_from_env_or_default()


def instrument_clients() -> None:
    """Run every registered instrumentation (PostgreSQL, Redis, outgoing HTTP); one that fails says so and the
    others still run: a missing span is no reason not to serve."""
    for hook in entry_points(group=INSTRUMENTATION_GROUP):
        try:
            hook.load()()
        except Exception as exc:  # noqa: BLE001 -- any failure of a third-party instrumentor
            logs.log(_log, logging.WARNING, "instrumentation not installed", name=hook.name, error=str(exc)[:300])
