"""External plugins over HTTP: the documented JSON contract (docs/plugins.md), HMAC-signed bodies, a timeout per
plugin, fail-open or fail-closed, and a guard against private and loopback targets unless the operator allows them."""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
import socket
import time
from typing import Literal
from urllib.parse import urlparse

import httpx
from pydantic import Field, SecretStr, field_validator

from scaigrid.runtime.errors import BadRequest, PolicyRefusal, Unavailable
from scaigrid.runtime.logs import log

from .base import HookContext, Plugin, PluginConfig

_log = logging.getLogger("scaigrid.plugins.webhook")
ALLOW_PRIVATE_ENV = "SCAIGRID_WEBHOOK_ALLOW_PRIVATE"  # operator's switch: 1 lets webhooks reach private addresses


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """`t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`: a receiver recomputes it and checks the age."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def check_target(url: str) -> None:
    """Refuse loopback, private, link-local and other non-public addresses (SSRF), unless the operator allows."""
    if os.environ.get(ALLOW_PRIVATE_ENV) == "1":
        return
    host = urlparse(url).hostname or ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        raise BadRequest(f"webhook host '{host}' does not resolve", param="config.url") from None
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if not ip.is_global:
            raise BadRequest(f"webhook target {host} ({ip}) is not a public address; the operator can allow "
                             f"private targets with {ALLOW_PRIVATE_ENV}=1", code="webhook_target_refused",
                             param="config.url")


class Webhook(Plugin):
    description = "Call your HTTP endpoint before and/or after the model; it may allow, deny or modify."
    phases = ("before", "after")
    secret_fields = ("secret",)

    class Config(PluginConfig):
        url: str = Field(pattern=r"^https?://", max_length=2000)
        secret: SecretStr = Field(description="HMAC key for the X-ScaiGrid-Signature header (stored encrypted)")
        timeout_ms: int = Field(2000, ge=10, le=30000)
        fail: Literal["open", "closed"] = Field("closed", description="when the endpoint errs or times out")
        phases: list[Literal["before", "after"]] = Field(default_factory=lambda: ["before"])

        @field_validator("url")
        @classmethod
        def _public(cls, v: str) -> str:
            check_target(v)
            return v

    def hook(self, ctx: HookContext) -> None:
        config = ctx.config
        if ctx.phase not in config.phases:
            return
        body = json.dumps({"version": 1, "phase": ctx.phase, "request_id": ctx.request_id,
                           "tenant_id": ctx.tenant_id, "request": ctx.request,
                           "response": ctx.response if ctx.phase == "after" else None},
                          separators=(",", ":")).encode()
        try:
            check_target(config.url)  # again at call time: DNS may have changed since the plugin was saved
            now = int(time.time())
            r = httpx.post(config.url, content=body, timeout=config.timeout_ms / 1000, headers={
                "Content-Type": "application/json", "X-ScaiGrid-Request-Id": ctx.request_id,
                "X-ScaiGrid-Signature": signature(config.secret.get_secret_value(), now, body)})
            r.raise_for_status()
            verdict = r.json()
            action = verdict.get("action")
            if action not in ("allow", "deny", "modify"):
                raise ValueError(f"unknown action {action!r}")
        except (httpx.HTTPError, ValueError, BadRequest) as exc:
            log(_log, logging.WARNING, "webhook plugin failed", url=config.url, fail=config.fail,
                error=f"{type(exc).__name__}: {exc}"[:300])
            if config.fail == "closed":
                raise Unavailable("a policy webhook of this tenant did not answer; the request is refused "
                                  "(fail-closed)", code="plugin_unavailable") from None
            return
        if action == "deny":
            raise PolicyRefusal(str(verdict.get("message") or "refused by the tenant's policy webhook")[:500],
                                code="content_policy_violation")
        if action == "modify":
            if ctx.phase == "before" and isinstance(verdict.get("request"), dict):
                ctx.request.clear()
                ctx.request.update(verdict["request"])
            elif ctx.phase == "after" and verdict.get("response") is not None:
                ctx.response = verdict["response"]
