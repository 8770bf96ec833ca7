"""External plugins over HTTP: the documented JSON contract (docs/plugins.md), HMAC-signed bodies, a timeout per
plugin, fail-open or fail-closed, and a guard against private and loopback targets unless the operator allows them.

The guard resolves the host once, checks every address, and the call connects to exactly the checked address
(the URL's host swapped for it, the Host header and TLS server name kept): a name that answers a public address
to the check and 127.0.0.1 to a second lookup (DNS rebinding) has no second lookup to answer."""
from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Literal

import httpx
from pydantic import Field, SecretStr, field_validator

from scaigrid.adapters.upstream.redact import error_text, guard_http_logs, redact_url
from scaigrid.runtime.errors import BadRequest, PolicyRefusal, Unavailable
from scaigrid.runtime.logs import log

from .base import HookContext, Plugin, PluginConfig

_log = logging.getLogger("scaigrid.plugins.webhook")
guard_http_logs()  # httpx's INFO line would show the webhook URL, token and all
ALLOW_PRIVATE_ENV = "SCAIGRID_WEBHOOK_ALLOW_PRIVATE"  # operator's switch: 1 lets webhooks reach private addresses
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the well-known NAT64 prefix: an IPv4 address in IPv6 clothes
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """`t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`: a receiver recomputes it and checks the age."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


@dataclass(frozen=True)
class Target:
    """A webhook URL and the one address of its host that passed the guard: the call connects there and only
    there."""

    url: httpx.URL
    address: str


def resolve(host: str) -> list[str]:
    """The host's addresses from one DNS lookup (an IP literal is its own answer): the only resolution a webhook
    call makes."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise BadRequest(f"webhook host '{host}' does not resolve", param="config.url") from None
    return list(dict.fromkeys(info[4][0].split("%")[0] for info in infos))  # no IPv6 scope: it is refused anyway


def _embedded(ip: _IP) -> _IP:
    """The IPv4 address an IPv6 one stands for (IPv4-mapped, 6to4, NAT64), else the address itself: ::ffff:127.0.0.1
    is loopback, whatever its spelling."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            return ip.ipv4_mapped
        if ip.sixtofour:
            return ip.sixtofour
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def _refusal(ip: _IP, allow_private: bool) -> str | None:
    """Why a webhook may not connect to `ip`, or None when it may."""
    ip = _embedded(ip)
    # never a webhook receiver, whatever the operator allows: 0.0.0.0 and :: reach this host, multicast is no
    # endpoint, link-local holds the cloud metadata service (169.254.169.254), the rest is reserved
    if ip.is_unspecified or ip.is_multicast or ip.is_link_local or (ip.is_reserved and not ip.is_loopback):
        return "is never a webhook target (unspecified, multicast, link-local or reserved)"
    if ip.is_global or allow_private:
        return None
    return f"is not a public address; the operator can allow private targets with {ALLOW_PRIVATE_ENV}=1"


def check_target(url: str) -> Target:
    """Resolve the URL's host once and refuse it if any address is loopback, private or otherwise not public
    (SSRF), unless the operator allows private ones; the answer names the address to connect to."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise BadRequest("the webhook URL is not a valid URL", param="config.url") from None
    host = parsed.raw_host.decode("ascii")  # IDNA-encoded: the name DNS and TLS see
    if parsed.scheme not in ("http", "https") or not host:
        raise BadRequest("the webhook URL must be http(s)://host/...", param="config.url")
    allow_private = os.environ.get(ALLOW_PRIVATE_ENV) == "1"
    addresses = resolve(host)
    for address in addresses:  # every one: a name with one public and one private address is refused
        why = _refusal(ipaddress.ip_address(address), allow_private)
        if why:
            raise BadRequest(f"webhook target {host} ({address}) {why}", code="webhook_target_refused",
                             param="config.url")
    return Target(parsed, addresses[0])


@functools.lru_cache(maxsize=4)
def _tls(cafile: str | None, capath: str | None) -> ssl.SSLContext:
    # built once, not per call (certifi's bundle takes milliseconds to load); keyed by httpx's CA env variables
    return httpx.create_ssl_context()


def post(target: Target, body: bytes, headers: dict[str, str], timeout: float) -> httpx.Response:
    """POST to the checked address with the URL's own Host header, TLS server name and certificate check
    (against the hostname, not the address); redirects are not followed and no proxy re-resolves the name."""
    url = target.url
    pinned = url.copy_with(host=target.address)
    headers = {**headers, "Host": url.netloc.decode("ascii")}  # netloc: host[:port], never the userinfo
    extensions = {"sni_hostname": url.raw_host.decode("ascii")} if url.scheme == "https" else {}
    # an explicit transport: httpx then ignores HTTP(S)_PROXY, whose proxy would resolve the name a second time
    transport = httpx.HTTPTransport(verify=_tls(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")))
    with httpx.Client(transport=transport, follow_redirects=False, timeout=timeout) as client:
        response = client.post(pinned, content=body, headers=headers, extensions=extensions)
    if response.is_redirect:  # following it would connect to an address nobody checked
        raise ValueError(f"the webhook answered a redirect (HTTP {response.status_code}), which is not followed")
    return response


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
            # checked again at call time (DNS may have changed since the plugin was saved); the call then goes to
            # the address this check saw, with no lookup of its own
            target = check_target(config.url)
            now = int(time.time())
            r = post(target, body, timeout=config.timeout_ms / 1000, headers={
                "Content-Type": "application/json", "X-ScaiGrid-Request-Id": ctx.request_id,
                "X-ScaiGrid-Signature": signature(config.secret.get_secret_value(), now, body)})
            r.raise_for_status()
            verdict = r.json()
            action = verdict.get("action")
            if action not in ("allow", "deny", "modify"):
                raise ValueError(f"unknown action {action!r}")
        except (httpx.HTTPError, ValueError, BadRequest) as exc:
            log(_log, logging.WARNING, "webhook plugin failed", url=redact_url(config.url), fail=config.fail,
                error=error_text(exc))
            if config.fail == "closed":
                raise Unavailable("a policy webhook of this tenant did not answer; the request is refused "
                                  "(fail-closed)", code="plugin_unavailable") from None
            return
        if action == "deny":
            raise PolicyRefusal(str(verdict.get("message") or "refused by the tenant's policy webhook")[:500],
                                code="content_policy_violation")
        if action == "modify":
            if ctx.phase == "before" and isinstance(verdict.get("request"), dict):
                ctx.replace_request(verdict["request"])
            elif ctx.phase == "after" and verdict.get("response") is not None:
                ctx.response = verdict["response"]
