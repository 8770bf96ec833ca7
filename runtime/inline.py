"""Inline placement: a function's container hosted inside the caller's process, steps run through its workers.

Same class, same DependencyProviders, same worker lifecycle (nameko's `_run_worker`) as a remote replica; only the
hop is missing. The worker runs in the caller's greenthread rather than a spawned one: the spawn and the two hub
switches it costs were most of an inline step's time (bench/hops.py, docs/runtime.md).
The container's entrypoints are not started, so it never consumes the function's queue.
"""
from __future__ import annotations

import eventlet
from nameko.containers import ServiceContainer
from nameko.extensions import iter_extensions
from nameko.rpc import Rpc

from . import logs, nameko_compat
from .errors import StepTimeout


INLINE_CONFIG_KEY = "SCAIGRID_INLINE"  # in the container config of a copy hosted inline (OwnReplicas reads it)


class InlineHost:
    """Hosts one function's ServiceContainer for in-process steps."""

    def __init__(self, service_cls: type, config: dict):
        self.container = ServiceContainer(service_cls, config)
        self.entrypoints = {ep.method_name: ep for ep in self.container.entrypoints if isinstance(ep, Rpc)}
        self._extensions: list = []
        for dep in self.container.dependencies:
            self._extensions.append(dep)
            self._extensions.extend(iter_extensions(dep))

    @property
    def name(self) -> str:
        return self.container.service_name

    def start(self) -> None:
        for ext in self._extensions:
            ext.setup()
        for ext in self._extensions:
            ext.start()

    def stop(self) -> None:
        nameko_compat.wait_for_workers(self.container)
        for ext in reversed(self._extensions):
            ext.stop()

    def call(self, method: str, args: tuple, timeout: float, context_data: dict | None = None):
        """Run `method` as a worker of this container; raise what it raises, StepTimeout past `timeout`."""
        saved = dict(logs.current.__dict__)  # the step binds its own function/step to this greenthread's logs
        try:
            # the worker stops at its next cooperative yield once nobody waits for it any more
            with eventlet.Timeout(timeout):
                return nameko_compat.run_worker(self.container, self.entrypoints[method], args, data=context_data)
        except eventlet.Timeout:
            raise StepTimeout(f"step '{self.name}.{method}' took longer than {timeout:g}s (inline)") from None
        finally:
            logs.current.__dict__.clear()
            logs.current.__dict__.update(saved)
