"""OpenAI-compatible upstreams (vLLM, TGI, Ollama, llama.cpp's server, OpenAI): timeouts, retries with backoff,
fallback to the next deployment, streaming passthrough. The upstream key comes from an environment variable named
in the model registry and never appears in logs or errors.

The client is urllib3's connection pool (keep-alive, no retries or redirects of its own: the loop here decides). It
is on every upstream request's path, and per request it costs less than half of httpx's CPU under eventlet (bench
in the commit that chose it): httpx stays for the webhooks and the tools, where its conveniences are worth it."""
from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass, field
from typing import Any, Iterator

import eventlet
import urllib3
from opentelemetry.trace import SpanKind
from urllib3.exceptions import HTTPError as TransportError

from scaigrid.runtime import tracing
from scaigrid.runtime.logs import log

from .redact import guard_http_logs, redact_url

_log = logging.getLogger("scaigrid.upstream")
guard_http_logs()  # urllib3's DEBUG line names the upstream's path and query
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
# what a failed exchange raises: urllib3's own errors, and socket errors it lets through; a body that is not JSON
FAILURES = (TransportError, OSError, ValueError)
KEEP_ALIVE = 20  # idle connections kept per upstream origin (more open when needed, and closed after use)


class UpstreamFailed(Exception):
    """Every deployment failed, or a stream was cut after its first chunk (`code` says which)."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


class UpstreamRejected(Exception):
    """The upstream refused the request as the caller's mistake (a 4xx other than those retried)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass
class Deployment:
    """One place a model is served: base URL, the model's name there, the env var holding its key."""

    base_url: str
    model: str
    api_key_env: str | None = None
    timeout: float = 60.0
    connect_timeout: float = 5.0

    @property
    def shown(self) -> str:
        """The base URL as logs and error messages show it: scheme://host[:port], no path, query or userinfo."""
        return redact_url(self.base_url)

    @classmethod
    def parse(cls, spec: dict, default_model: str) -> "Deployment":
        return cls(base_url=spec["base_url"].rstrip("/"), model=spec.get("model", default_model),
                   api_key_env=spec.get("api_key_env"), timeout=float(spec.get("timeout", 60)),
                   connect_timeout=float(spec.get("connect_timeout", 5)))

    def headers(self) -> dict[str, str]:
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        return {"Authorization": f"Bearer {key}"} if key else {}


@dataclass
class Upstream:
    """A registry model with backend `openai`: its deployments in order (the first, then fallbacks)."""

    model_id: str
    deployments: list[Deployment]
    retries: int = 2
    backoff: float = 0.2
    client: urllib3.PoolManager = field(default_factory=lambda: urllib3.PoolManager(
        maxsize=KEEP_ALIVE, block=False, retries=False))

    @classmethod
    def from_registry(cls, spec: dict) -> "Upstream":
        up = spec["upstream"]
        deployments = [Deployment.parse(up, spec["id"])] + [Deployment.parse(f, spec["id"])
                                                            for f in up.get("fallbacks", [])]
        return cls(spec["id"], deployments, int(up.get("retries", 2)), float(up.get("backoff", 0.2)))

    def _attempts(self) -> Iterator[tuple[Deployment, int]]:
        for deployment in self.deployments:
            for attempt in range(self.retries + 1):
                yield deployment, attempt

    def _sleep(self, attempt: int) -> None:
        eventlet.sleep(self.backoff * (2 ** attempt) * (0.5 + random.random()))  # jitter: no thundering herd

    def _body(self, body: dict, deployment: Deployment) -> dict:
        return {**body, "model": deployment.model}

    def _send(self, deployment: Deployment, path: str, body: dict, stream: bool) -> urllib3.BaseHTTPResponse:
        data = json.dumps(self._body(body, deployment), ensure_ascii=False, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream" if stream else
                   "application/json", **deployment.headers()}
        if not tracing.on:
            return self._request(deployment, path, data, headers, stream)
        # a span of our own, not urllib3's instrumentation: that one cost as much of a traced gateway's CPU as all
        # its other spans together (py-spy, bench/gateway.py --tracing); the URL as logs show it, no header
        with tracing.span("POST", kind=SpanKind.CLIENT,
                          attributes={"http.request.method": "POST", "url.full": deployment.shown}) as span:
            response = self._request(deployment, path, data, {**headers, **tracing.headers()}, stream)
            span.set_attribute("http.response.status_code", response.status)
            return response

    def _request(self, deployment: Deployment, path: str, data: bytes, headers: dict,
                 stream: bool) -> urllib3.BaseHTTPResponse:
        return self.client.request(
            "POST", f"{deployment.base_url}{path}", body=data, headers=headers,
            timeout=urllib3.Timeout(connect=deployment.connect_timeout, read=deployment.timeout),
            redirect=False, preload_content=not stream)

    def call(self, path: str, body: dict) -> dict:
        """A non-streamed call: retried on connection errors, timeouts, 429 and 5xx; then the next deployment."""
        last = "no deployment"
        for deployment, attempt in self._attempts():
            if attempt:
                self._sleep(attempt - 1)
            try:
                r = self._send(deployment, path, body, stream=False)
                if r.status in RETRY_STATUS:
                    last = f"{deployment.shown}: HTTP {r.status}"
                    log(_log, logging.WARNING, "upstream answered an error", upstream=deployment.shown,
                        attempt=attempt, status=r.status)
                    continue
                if r.status >= 400:  # the caller's mistake: passing it on beats retrying it
                    raise _client_error(r)
                answer = json.loads(r.data)
            except FAILURES as exc:
                last = f"{deployment.shown}: {type(exc).__name__}"
                log(_log, logging.WARNING, "upstream call failed", upstream=deployment.shown, attempt=attempt,
                    error=type(exc).__name__)
                continue
            answer["model"] = self.model_id
            return answer
        raise UpstreamFailed(f"model '{self.model_id}': every upstream failed (last: {last})", "upstream_failed")

    def stream(self, path: str, body: dict) -> Iterator[dict]:
        """Streamed passthrough: chunks as the upstream sends them. Before the first chunk a failure moves on to
        a retry or the next deployment; after it, the stream is cut and the caller hears UpstreamFailed."""
        body = {**body, "stream": True, "stream_options": {**(body.get("stream_options") or {}), "include_usage": True}}
        last = "no deployment"
        for deployment, attempt in self._attempts():
            if attempt:
                self._sleep(attempt - 1)
            sent, r, complete = 0, None, False
            try:
                r = self._send(deployment, path, body, stream=True)
                if r.status in RETRY_STATUS:
                    last = f"{deployment.shown}: HTTP {r.status}"
                    continue
                if r.status >= 400:
                    r.read()
                    raise _client_error(r)
                for line in sse_lines(r):
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        complete = True
                        return
                    chunk = json.loads(data)
                    chunk["model"] = self.model_id
                    sent += 1
                    yield chunk
                if sent:  # every OpenAI-compatible stream ends with [DONE]: without it, it was cut
                    raise UpstreamFailed(f"model '{self.model_id}': the upstream stream broke after {sent} "
                                         f"chunks (closed without [DONE])", "upstream_stream_cut")
                last = f"{deployment.shown}: empty stream"
            except FAILURES as exc:
                if sent:
                    raise UpstreamFailed(f"model '{self.model_id}': the upstream stream broke after {sent} chunks "
                                         f"({type(exc).__name__})", "upstream_stream_cut") from None
                last = f"{deployment.shown}: {type(exc).__name__}"
                log(_log, logging.WARNING, "upstream stream failed", upstream=deployment.shown, attempt=attempt,
                    error=type(exc).__name__)
            finally:
                if r is not None:
                    finish(r, complete)
        raise UpstreamFailed(f"model '{self.model_id}': every upstream failed (last: {last})", "upstream_failed")

    def close(self) -> None:
        self.client.clear()  # closes every pooled connection


def sse_lines(r: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    """The lines of a server-sent event stream as they arrive (read1: whatever came, never waiting to fill)."""
    pending = b""
    while True:
        data = r.read1(65536)
        if not data:
            break
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.rstrip(b"\r")
    if pending:
        yield pending.rstrip(b"\r")


def finish(r: urllib3.BaseHTTPResponse, complete: bool) -> None:
    """A stream that reached [DONE] goes back to the pool for the next request (what follows [DONE] is the end of
    the chunked body, read here); one left early (cut, refused, or the caller stopped reading) is closed."""
    if complete:
        r.drain_conn()
    else:
        r.close()
    r.release_conn()


def _client_error(r: urllib3.BaseHTTPResponse) -> UpstreamRejected:
    try:
        error = json.loads(r.data).get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    message = error.get("message") if isinstance(error, dict) else str(error)
    return UpstreamRejected(f"upstream refused the request: {message or r.reason}",
                            error.get("param") if isinstance(error, dict) else None)


def usage_of(answer: dict) -> dict[str, Any]:
    usage = answer.get("usage") or {}
    return {"prompt_tokens": int(usage.get("prompt_tokens") or 0),
            "completion_tokens": int(usage.get("completion_tokens") or 0),
            "total_tokens": int(usage.get("total_tokens") or 0)}


def estimated_usage(body: dict, pieces: int) -> dict[str, Any]:
    """For an upstream that streams without reporting usage (llama.cpp's server, older vLLM): one token per
    chunk of output (text or a piece of a tool call), which is how these servers stream, and the prompt at ~4 bytes
    a token, the tool definitions included (they are prompted too). Marked as estimated, so a streamed answer is
    never billed as zero."""
    prompt = [body.get("messages", body.get("prompt", "")), *(body[k] for k in ("tools", "functions") if body.get(k))]
    prompt = prompt[0] if len(prompt) == 1 else prompt
    prompt_tokens = -(-len(json.dumps(prompt, ensure_ascii=False).encode()) // 4)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": pieces, "total_tokens": prompt_tokens + pieces,
            "estimated": True}
