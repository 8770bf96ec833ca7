"""Plugins through the running graph: every built-in, a real webhook server, an entry-point plugin package,
ordering, tenant scoping, changes applied within a second on both gateway replicas, streamed answers."""
import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from receivers import JsonHandler
from conftest import bootstrap_key, launch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "scaigrid-plugin-shout"
PII = "mail bob@example.com, call +49 170 1234567, card 4111 1111 1111 1111"


class Hook(JsonHandler):
    """A tenant's policy endpoint: checks the signature, then does what the test asked for."""

    secret = "whsec-test"
    behaviour = {"action": "allow"}
    delay = 0.0
    seen: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        t, v1 = (part.split("=", 1)[1] for part in self.headers["X-ScaiGrid-Signature"].split(","))
        expected = hmac.new(self.secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
        Hook.seen.append({"valid": hmac.compare_digest(v1, expected) and abs(time.time() - int(t)) < 60,
                          "payload": json.loads(body)})
        time.sleep(Hook.delay)
        self.send_json(200, Hook.behaviour)


@pytest.fixture(scope="module")
def webhook_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/policy"
    server.shutdown()


@pytest.fixture(scope="module")
def env(database_url, tmp_path_factory):
    """The graph, with the sample plugin package installed as pip installs it (into a --target folder)."""
    tmp = tmp_path_factory.mktemp("plugins")
    site = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(EXAMPLE)], check=True, capture_output=True, timeout=300)
    admin = bootstrap_key(database_url)
    graph = launch("plugins.yaml", tmp, env={"SCAIGRID_DATABASE_URL": database_url, "PYTHONPATH": str(site),
                                             "SCAIGRID_WEBHOOK_ALLOW_PRIVATE": "1"})
    graph.admin = {"Authorization": f"Bearer {admin}"}
    yield graph
    graph.stop()


class Tenant:
    def __init__(self, env, name):
        self.env = env
        tenant = httpx.post(env.base_url + "/api/v1/tenants", json={"name": name}, headers=env.admin).json()
        self.id = tenant["id"]
        key = httpx.post(f"{env.base_url}/api/v1/tenants/{self.id}/keys", json={"name": "a", "role": "tenant-admin"},
                         headers=env.admin).json()
        self.headers = {"Authorization": f"Bearer {key['key']}"}

    def add(self, kind, config=None, **extra):
        r = httpx.post(self.env.base_url + "/api/v1/plugins", headers=self.headers,
                       json={"name": f"{kind}-{extra.get('position', 100)}", "kind": kind, "config": config or {},
                             **extra})
        assert r.status_code == 201, r.text
        return r.json()

    def chat(self, content, **body):
        with httpx.Client() as client:  # fresh connections: both gateway replicas serve
            return client.post(self.env.base_url + "/v1/chat/completions", headers=self.headers, timeout=30,
                               json={"model": "parrot", "messages": [{"role": "user", "content": content}], **body})

    def stream(self, content) -> list[str]:
        pieces = []
        with httpx.stream("POST", self.env.base_url + "/v1/chat/completions", headers=self.headers, timeout=30,
                          json={"model": "parrot", "stream": True,
                                "messages": [{"role": "user", "content": content}]}) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    delta = json.loads(line[6:])["choices"][0].get("delta", {})
                    if delta.get("content"):
                        pieces.append(delta["content"])
        return pieces


def received(answer) -> dict:
    return answer.json()["received"]


def content(answer) -> str:
    return answer.json()["choices"][0]["message"]["content"]


def test_no_plugins_changes_nothing(env):
    t = Tenant(env, "plain")
    r = t.chat(PII)
    assert r.status_code == 200 and received(r)["messages"][0]["content"] == PII and content(r).endswith(PII)


def test_pii_redaction_hides_pii_from_the_model(env):
    t = Tenant(env, "pii")
    t.add("pii_redaction")
    r = t.chat(PII)
    seen = received(r)["messages"][0]["content"]
    assert seen == "mail [EMAIL_1], call [PHONE_1], card [CARD_1]"
    assert content(r) == "You said: " + seen


def test_reversible_placeholders_come_back_in_the_answer(env):
    t = Tenant(env, "pii-rev")
    t.add("pii_redaction", {"reversible": True})
    r = t.chat(PII)
    assert "bob@example.com" not in json.dumps(received(r))
    assert content(r) == "You said: " + PII


def test_streamed_answers_are_redacted_without_leaking_pieces(env):
    t = Tenant(env, "pii-stream")
    t.add("pii_redaction", {"reversible": True, "hold_chars": 16})
    text = "first words then " + PII + " and a tail of several more words to stream"
    pieces = t.stream(text)
    assert "".join(pieces) == "You said: " + text
    assert len(pieces) > 2  # still streamed, not held to the end
    for piece in pieces:  # a value is released whole or not at all
        for value in ("bob@example.com", "+49 170 1234567", "4111 1111 1111 1111"):
            assert value in piece or not any(part in piece for part in (value[:6], value[-6:]))


def test_deny_list_refuses_requests_and_scrubs_answers(env):
    t = Tenant(env, "deny")
    t.add("deny_list", {"words": ["forbidden"], "patterns": [r"secret-\d+"], "check": ["request"]})
    r = t.chat("tell me the Forbidden thing")
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "content_policy_violation" and r.json()["error"]["type"] == "invalid_request_error"
    assert t.chat("secret-42 please").status_code == 400
    assert t.chat("harmless").status_code == 200
    u = Tenant(env, "deny-answer")
    u.add("deny_list", {"words": ["darn"], "check": ["answer"]})
    assert content(u.chat("well darn it")) == "You said: well [removed] it"
    assert "".join(u.stream("well darn it")) == "You said: well [removed] it"


def test_bad_plugin_config_names_the_field(env):
    t = Tenant(env, "badcfg")
    r = httpx.post(env.base_url + "/api/v1/plugins", headers=t.headers,
                   json={"name": "x", "kind": "deny_list", "config": {"patterns": ["(unclosed"]}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "config.patterns"
    r = httpx.post(env.base_url + "/api/v1/plugins", headers=t.headers, json={"name": "x", "kind": "nope"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "kind"


def test_system_prompt_and_clamp_in_order(env):
    t = Tenant(env, "ordered")
    t.add("system_prompt", {"content": "alpha for {tenant_id}"}, position=20)
    t.add("system_prompt", {"content": "beta"}, position=10)
    t.add("max_tokens_clamp", {"max_tokens": 64}, position=30)
    r = t.chat("hi", max_tokens=5000)
    messages = received(r)["messages"]
    # beta (position 10) runs first; alpha (20) then prepends in front of it
    assert [m["content"] for m in messages[:2]] == [f"alpha for {t.id}", "beta"]
    assert received(r)["max_tokens"] == 64
    assert received(t.chat("hi", max_tokens=10))["max_tokens"] == 10


def test_the_steps_get_the_one_limit_the_door_derived_and_the_clamp_lowered(env):
    plain = Tenant(env, "door-defaults").chat("hi", max_completion_tokens=7, max_tokens=300)
    params = plain.json()["received_params"]
    assert params["max_tokens"] == 7  # max_completion_tokens, OpenAI's newer name, is the limit
    assert {k: params[k] for k in ("stream", "n", "temperature", "top_p", "stop")} == {
        "stream": False, "n": 1, "temperature": 1.0, "top_p": 1.0, "stop": None}
    assert received(plain)["max_completion_tokens"] == 7 and "n" not in received(plain)  # the body: as sent
    t = Tenant(env, "one-limit")
    t.add("max_tokens_clamp", {"max_tokens": 64})
    r = t.chat("hi", max_completion_tokens=5000)
    assert r.json()["received_params"]["max_tokens"] == 64
    assert received(r)["max_tokens"] == 64 and "max_completion_tokens" not in received(r)
    assert t.chat("hi", max_completion_tokens=10, max_tokens=500).json()["received_params"]["max_tokens"] == 10


def test_changes_apply_within_a_second_on_every_replica(env):
    t = Tenant(env, "live")
    for _ in range(10):
        assert t.chat("blocked word").status_code == 200  # both replicas now hold an empty chain
    plugin = t.add("deny_list", {"words": ["blocked"]})
    time.sleep(0.5)
    assert {t.chat("blocked word").status_code for _ in range(20)} == {400}
    r = httpx.patch(f"{env.base_url}/api/v1/plugins/{plugin['id']}", json={"enabled": False}, headers=t.headers)
    assert r.status_code == 200 and r.json()["enabled"] is False
    time.sleep(0.5)
    assert {t.chat("blocked word").status_code for _ in range(20)} == {200}


def test_tenant_scoping(env):
    a, b = Tenant(env, "scope-a"), Tenant(env, "scope-b")
    plugin = a.add("deny_list", {"words": ["apple"]})
    assert a.chat("apple").status_code == 400 and b.chat("apple").status_code == 200
    assert httpx.get(env.base_url + "/api/v1/plugins", headers=b.headers).json()["data"] == []
    assert httpx.get(env.base_url + "/api/v1/plugins", params={"tenant_id": a.id}, headers=b.headers).status_code == 404
    assert httpx.delete(f"{env.base_url}/api/v1/plugins/{plugin['id']}", headers=b.headers).status_code == 404
    assert httpx.delete(f"{env.base_url}/api/v1/plugins/{plugin['id']}", headers=a.headers).status_code == 200


def test_webhook_signed_modify_deny(env, webhook_server):
    t = Tenant(env, "hooked")
    plugin = t.add("webhook", {"url": webhook_server, "secret": Hook.secret, "phases": ["before", "after"]})
    assert plugin["config"]["secret"] == "********"  # never shown again
    Hook.seen.clear()
    Hook.behaviour = {"action": "modify", "request": {"model": "parrot",
                                                      "messages": [{"role": "user", "content": "rewritten"}]}}
    r = t.chat("original")
    assert received(r)["messages"][0]["content"] == "rewritten"
    assert [s["payload"]["phase"] for s in Hook.seen] == ["before", "after"] and all(s["valid"] for s in Hook.seen)
    assert Hook.seen[0]["payload"]["tenant_id"] == t.id
    Hook.behaviour = {"action": "deny", "message": "not today"}
    r = t.chat("anything")
    assert r.status_code == 400 and r.json()["error"]["message"] == "not today"
    Hook.behaviour = {"action": "allow"}


def test_a_webhook_rewrite_carries_the_effective_values_with_it(env, webhook_server):
    t = Tenant(env, "rewriter")
    t.add("webhook", {"url": webhook_server, "secret": Hook.secret})
    Hook.behaviour = {"action": "modify", "request": {"model": "parrot", "max_completion_tokens": 9,
                                                      "temperature": 0.5, "stream_options": {"include_usage": True},
                                                      "messages": [{"role": "user", "content": "rewritten"}]}}
    try:
        params = t.chat("original", max_tokens=100, seed=3).json()["received_params"]
        assert (params["max_tokens"], params["temperature"], params["seed"]) == (9, 0.5, None)
        assert params["include_usage"] is False  # the answer's shape stays as the door decided
        assert "".join(t.stream("original")) == "You said: rewritten"  # still streamed, though the rewrite says not
    finally:
        Hook.behaviour = {"action": "allow"}


@pytest.mark.parametrize("fail, status", [("open", 200), ("closed", 503)])
def test_webhook_timeout_fails_open_or_closed(env, webhook_server, fail, status):
    t = Tenant(env, f"slow-{fail}")
    t.add("webhook", {"url": webhook_server, "secret": Hook.secret, "timeout_ms": 200, "fail": fail})
    Hook.delay = 1.0
    try:
        started = time.monotonic()
        r = t.chat("hello")
        assert r.status_code == status
        assert time.monotonic() - started < 1.0  # the plugin's timeout, not the endpoint's pace
        if status == 503:
            assert r.json()["error"]["code"] == "plugin_unavailable"
    finally:
        Hook.delay = 0.0


def test_entry_point_plugin_from_an_installed_package(env):
    kinds = httpx.get(env.base_url + "/api/v1/plugins/kinds", headers=env.admin).json()["data"]
    assert {"pii_redaction", "deny_list", "system_prompt", "max_tokens_clamp", "webhook", "shout"} <= {
        k["kind"] for k in kinds}
    t = Tenant(env, "shouty")
    t.add("shout", {"exclaim": True})
    assert content(t.chat("quiet please")) == "YOU SAID: QUIET PLEASE!"
    assert "".join(t.stream("quiet please")) == "YOU SAID: QUIET PLEASE"
