"""Inline placement: a function's container hosted inside the caller's process, steps run through its workers.

Same class, same DependencyProviders, same worker lifecycle as a remote replica; only the hop is missing.
The container's entrypoints are not started, so it never consumes the function's queue.
"""
from __future__ import annotations

import eventlet
from eventlet.event import Event
from nameko.containers import ServiceContainer
from nameko.extensions import iter_extensions
from nameko.rpc import Rpc

from .errors import StepTimeout


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
        self.container._worker_pool.waitall()
        for ext in reversed(self._extensions):
            ext.stop()

    def call(self, method: str, args: tuple, timeout: float, context_data: dict | None = None):
        """Run `method` in a worker of this container; raise what it raises, StepTimeout past `timeout`."""
        done = Event()

        def handle_result(worker_ctx, result, exc_info):
            done.send((result, exc_info))
            return result, exc_info

        worker_ctx = self.container.spawn_worker(
            self.entrypoints[method], args, {}, context_data=context_data, handle_result=handle_result)
        try:
            with eventlet.Timeout(timeout):
                result, exc_info = done.wait()
        except eventlet.Timeout:
            # nobody waits for it any more: stop the work instead of letting it run on
            thread = self.container._worker_threads.get(worker_ctx)
            if thread is not None:
                thread.kill()
            raise StepTimeout(f"step '{self.name}.{method}' took longer than {timeout:g}s (inline)") from None
        if exc_info is not None:
            raise exc_info[1]
        return result
