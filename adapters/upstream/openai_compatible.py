"""OpenAI-compatible upstreams (vLLM, TGI, Ollama, llama.cpp's server, OpenAI): timeouts, retries with backoff,
fallback to the next deployment, streaming passthrough. The upstream key comes from an environment variable named
in the model registry and never appears in logs or errors."""
from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass, field
from typing import Any, Iterator

import eventlet
import httpx

from scaigrid.runtime.logs import log

from .redact import guard_httpx_log, redact_url

_log = logging.getLogger("scaigrid.upstream")
guard_httpx_log()  # httpx's INFO line names the full upstream URL
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


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
    client: httpx.Client = field(default_factory=lambda: httpx.Client(http2=False))

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

    def call(self, path: str, body: dict) -> dict:
        """A non-streamed call: retried on connection errors, timeouts, 429 and 5xx; then the next deployment."""
        last = "no deployment"
        for deployment, attempt in self._attempts():
            if attempt:
                self._sleep(attempt - 1)
            try:
                r = self.client.post(f"{deployment.base_url}{path}", json=self._body(body, deployment),
                                     headers=deployment.headers(),
                                     timeout=httpx.Timeout(deployment.timeout, connect=deployment.connect_timeout))
            except httpx.HTTPError as exc:
                last = f"{deployment.shown}: {type(exc).__name__}"
                log(_log, logging.WARNING, "upstream call failed", upstream=deployment.shown, attempt=attempt,
                    error=type(exc).__name__)
                continue
            if r.status_code in RETRY_STATUS:
                last = f"{deployment.shown}: HTTP {r.status_code}"
                log(_log, logging.WARNING, "upstream answered an error", upstream=deployment.shown,
                    attempt=attempt, status=r.status_code)
                continue
            if r.status_code >= 400:  # the caller's mistake: passing it on beats retrying it
                raise _client_error(r)
            answer = r.json()
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
            sent = 0
            try:
                with self.client.stream("POST", f"{deployment.base_url}{path}", json=self._body(body, deployment),
                                        headers=deployment.headers(),
                                        timeout=httpx.Timeout(deployment.timeout,
                                                              connect=deployment.connect_timeout)) as r:
                    if r.status_code in RETRY_STATUS:
                        last = f"{deployment.shown}: HTTP {r.status_code}"
                        continue
                    if r.status_code >= 400:
                        r.read()
                        raise _client_error(r)
                    for line in r.iter_lines():
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            return
                        chunk = json.loads(data)
                        chunk["model"] = self.model_id
                        sent += 1
                        yield chunk
                    if sent:  # every OpenAI-compatible stream ends with [DONE]: without it, it was cut
                        raise UpstreamFailed(f"model '{self.model_id}': the upstream stream broke after {sent} "
                                             f"chunks (closed without [DONE])", "upstream_stream_cut")
                    last = f"{deployment.shown}: empty stream"
            except (httpx.HTTPError, json.JSONDecodeError) as exc:
                if sent:
                    raise UpstreamFailed(f"model '{self.model_id}': the upstream stream broke after {sent} chunks "
                                         f"({type(exc).__name__})", "upstream_stream_cut") from None
                last = f"{deployment.shown}: {type(exc).__name__}"
                log(_log, logging.WARNING, "upstream stream failed", upstream=deployment.shown, attempt=attempt,
                    error=type(exc).__name__)
        raise UpstreamFailed(f"model '{self.model_id}': every upstream failed (last: {last})", "upstream_failed")

    def close(self) -> None:
        self.client.close()


def _client_error(r: httpx.Response) -> UpstreamRejected:
    try:
        error = r.json().get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    message = error.get("message") if isinstance(error, dict) else str(error)
    return UpstreamRejected(f"upstream refused the request: {message or r.reason_phrase}",
                            error.get("param") if isinstance(error, dict) else None)


def usage_of(answer: dict) -> dict[str, Any]:
    usage = answer.get("usage") or {}
    return {"prompt_tokens": int(usage.get("prompt_tokens") or 0),
            "completion_tokens": int(usage.get("completion_tokens") or 0),
            "total_tokens": int(usage.get("total_tokens") or 0)}


def estimated_usage(body: dict, pieces: int) -> dict[str, Any]:
    """For an upstream that streams without reporting usage (llama.cpp's server, older vLLM): one token per
    content chunk, which is how these servers stream, and the prompt at ~4 bytes a token. Marked as estimated,
    so a streamed answer is never billed as zero."""
    prompt = body.get("messages", body.get("prompt", ""))
    prompt_tokens = -(-len(json.dumps(prompt, ensure_ascii=False).encode()) // 4)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": pieces, "total_tokens": prompt_tokens + pieces,
            "estimated": True}
