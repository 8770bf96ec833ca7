"""The HTTP entrypoint of an ingress function: nameko's, with the worker run in the connection's own greenthread.

nameko's HttpRequestHandler spawns a worker per request and parks the connection's greenthread on an Event until
it ends: a spawn and two trips through the hub per request, in which whatever else is runnable (the after-step
spool's delivery, a stream's producer) goes first. Run in place, the same worker (DependencyProviders' setup,
result and teardown around the method) answers without them. Concurrency stays bounded by the container's
max_workers, as nameko's worker pool bounded it.
"""
from __future__ import annotations

from eventlet.semaphore import Semaphore
from nameko.web.handlers import HttpRequestHandler

from . import nameko_compat


class InPlaceHttp(HttpRequestHandler):
    """`@http(method, url)` whose worker runs in the greenthread that read the request."""

    def setup(self):
        super().setup()
        self._slots = Semaphore(self.container.max_workers)

    def handle_request(self, request):
        request.shallow = False
        try:
            context_data = self.server.context_data_from_headers(request)
            args, kwargs = self.get_entrypoint_parameters(request)
            self.check_signature(args, kwargs)
            nameko_compat.refuse_if_killed(self.container)
            with self._slots:
                result = nameko_compat.run_worker(self.container, self, args, kwargs, data=context_data)
            return self.response_from_result(result)
        except Exception as exc:
            return self.response_from_exception(exc)


http = InPlaceHttp.decorator
