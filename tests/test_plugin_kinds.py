"""Built-in plugin kinds on their own: PII detection (with its checksums), the webhook's SSRF guard and signature."""
import hashlib
import hmac

import pytest
from pydantic import ValidationError

from scaigrid.functions.plugins.kinds.base import HookContext
from scaigrid.functions.plugins.kinds.pii_redaction import PiiRedaction, find, iban_ok, luhn
from scaigrid.functions.plugins.kinds.webhook import ALLOW_PRIVATE_ENV, Webhook, check_target, signature
from scaigrid.runtime.errors import BadRequest

ALL = ["email", "phone", "iban", "card", "ip"]


@pytest.mark.parametrize("text, kind", [
    ("bob.smith+tag@mail.example.co.uk", "email"),
    ("+49 170 1234567", "phone"),
    ("(555) 123-4567 x", "phone"),
    ("DE89 3704 0044 0532 0130 00", "iban"),
    ("GB82WEST12345698765432", "iban"),
    ("4111 1111 1111 1111", "card"),
    ("5500-0000-0000-0004", "card"),
    ("192.168.1.20", "ip"),
    ("2001:db8::8a2e:370:7334", "ip"),
])
def test_finds_each_kind(text, kind):
    spans = find(f"see {text} here", ALL)
    assert [(f"see {text} here"[s:e], k) for s, e, k in spans][0][1] == kind


@pytest.mark.parametrize("text", [
    "order 1234 5678 shipped",         # too short and no prefix for a phone
    "card 4111 1111 1111 1112",        # fails Luhn
    "iban DE00 3704 0044 0532 0130 00",  # fails mod-97
    "version 1.2.3 and 999.1.1.1",     # not an address
    "on 2026-11-27 at 10:30",          # a date and a time
])
def test_leaves_lookalikes_alone(text):
    assert find(text, ALL) == []


def test_checksums():
    assert luhn("4111111111111111") and not luhn("4111111111111112")
    assert iban_ok("DE89370400440532013000") and not iban_ok("DE89370400440532013001")


def test_same_value_same_placeholder_and_restore():
    plugin, config = PiiRedaction(), PiiRedaction.Config(reversible=True)
    ctx = HookContext("before", config, "t", "r", {"messages": [
        {"role": "user", "content": "a@b.io and again a@b.io, or c@d.io"}]})
    plugin.hook(ctx)
    assert ctx.request["messages"][0]["content"] == "[EMAIL_1] and again [EMAIL_1], or [EMAIL_2]"
    after = HookContext("after", config, "t", "r", ctx.request, {"choices": [{"message": {
        "content": "write to [EMAIL_2], not x@y.io"}}]}, ctx.state)
    plugin.hook(after)
    assert after.response["choices"][0]["message"]["content"] == "write to c@d.io, not [EMAIL_3]"


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/x", "http://10.1.2.3/", "http://[::1]/", "http://localhost/",
                                 "http://[::ffff:127.0.0.1]/", "http://[::ffff:10.0.0.1]/", "http://100.64.0.1/",
                                 "http://[2002:7f00:1::]/", "http://[64:ff9b::a00:1]/", "http://[fd00::1]/"])
def test_webhook_refuses_private_targets(url, monkeypatch):
    monkeypatch.delenv(ALLOW_PRIVATE_ENV, raising=False)
    with pytest.raises(BadRequest) as info:
        check_target(url)
    assert info.value.code == "webhook_target_refused" and ALLOW_PRIVATE_ENV in info.value.message
    with pytest.raises(BadRequest):  # and so does the plugin's config
        Webhook.Config(url=url, secret="s")
    monkeypatch.setenv(ALLOW_PRIVATE_ENV, "1")
    check_target(url)  # the operator allowed it


@pytest.mark.parametrize("url", ["http://0.0.0.0:8080/", "http://[::]/", "http://224.0.0.1/", "http://[ff02::1]/",
                                 "http://240.0.0.1/", "http://255.255.255.255/", "http://169.254.169.254/latest",
                                 "http://[fe80::1]/", "http://[::ffff:169.254.169.254]/", "http://[::127.0.0.1]/"])
def test_webhook_never_reaches_unspecified_multicast_link_local_reserved(url, monkeypatch):
    """Not even with the operator's switch: none of these is a receiver, and 169.254.169.254 is the cloud
    metadata service."""
    for allowed in (False, True):
        if allowed:
            monkeypatch.setenv(ALLOW_PRIVATE_ENV, "1")
        else:
            monkeypatch.delenv(ALLOW_PRIVATE_ENV, raising=False)
        with pytest.raises(BadRequest) as info:
            check_target(url)
        assert info.value.code == "webhook_target_refused" and "never" in info.value.message


def test_webhook_allows_public_targets(monkeypatch):
    monkeypatch.delenv(ALLOW_PRIVATE_ENV, raising=False)
    target = check_target("http://8.8.8.8/hook")
    assert target.address == "8.8.8.8" and target.url.path == "/hook"
    assert check_target("http://[2606:4700:4700::1111]/").address == "2606:4700:4700::1111"
    with pytest.raises(ValidationError):
        Webhook.Config(url="ftp://8.8.8.8/", secret="s")


def test_signature_is_hmac_of_timestamp_and_body():
    body = b'{"a":1}'
    expected = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature("k", 1700000000, body) == f"t=1700000000,v1={expected}"
