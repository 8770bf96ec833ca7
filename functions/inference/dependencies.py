"""The inference function's DependencyProviders: the OpenAI-compatible upstreams of the registry, one client each
per process, whose failures come out as step errors (the adapter raises its own)."""
from __future__ import annotations

from collections.abc import Iterator

from nameko.extensions import DependencyProvider

from scaigrid.adapters.upstream.openai_compatible import Upstream, UpstreamFailed, UpstreamRejected
from scaigrid.runtime.errors import BadRequest, StepError, UpstreamError


def _step_error(exc: UpstreamFailed | UpstreamRejected) -> StepError:
    if isinstance(exc, UpstreamRejected):
        return BadRequest(str(exc), code="upstream_rejected", param=exc.param)
    return UpstreamError(str(exc), code=exc.code)


class Upstreams:
    """Keyed by registry ids only (a spec is looked up before it gets here): bounded by the registry."""

    def __init__(self):
        self.clients: dict[str, Upstream] = {}

    def _client(self, spec: dict) -> Upstream:
        client = self.clients.get(spec["id"])
        if client is None:
            client = self.clients[spec["id"]] = Upstream.from_registry(spec)
        return client

    def call(self, spec: dict, path: str, body: dict) -> dict:
        try:
            return self._client(spec).call(path, body)
        except (UpstreamFailed, UpstreamRejected) as exc:
            raise _step_error(exc) from None

    def stream(self, spec: dict, path: str, body: dict) -> Iterator[dict]:
        try:
            yield from self._client(spec).stream(path, body)
        except (UpstreamFailed, UpstreamRejected) as exc:
            raise _step_error(exc) from None

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        self.clients.clear()


class UpstreamProvider(DependencyProvider):
    def setup(self):
        self.upstreams = Upstreams()

    def stop(self):
        self.upstreams.close()

    def get_dependency(self, worker_ctx):
        return self.upstreams
