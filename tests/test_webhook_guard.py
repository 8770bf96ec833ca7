"""The webhook's SSRF guard against DNS rebinding (one resolution, the connection pinned to the checked address, the
Host header and TLS name kept), redirects, and URLs kept out of logs (webhook and upstream). Real HTTP(S)
receivers on 127.0.0.1; the names resolve through a socket.getaddrinfo this test controls (there is no DNS here)."""
import datetime
import io
import json
import logging
import socket
import ssl
import threading
from http.server import ThreadingHTTPServer

import pytest
from pydantic import SecretStr

from scaigrid.adapters.upstream.openai_compatible import Deployment, Upstream, UpstreamFailed
from scaigrid.adapters.upstream.redact import redact_text, redact_url
from scaigrid.functions.plugins.kinds.base import HookContext
from scaigrid.functions.plugins.kinds.webhook import ALLOW_PRIVATE_ENV, Webhook
from scaigrid.runtime.errors import BadRequest, Unavailable
from scaigrid.runtime.logs import JsonFormatter
from receivers import JsonHandler

PUBLIC = "93.184.216.34"
TOKEN = "tok-5ecret-in-query"


class Receiver(JsonHandler):
    """Records what reached it; answers `status` (with `location` on a redirect) or an allow verdict."""

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.seen.append({"host": self.headers["Host"], "path": self.path})
        self.send_json(self.server.status, {"action": "allow"},
                       {"Location": self.server.location} if self.server.location else None)


def serve(status: int = 200, location: str | None = None, tls: ssl.SSLContext | None = None) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    server.seen, server.status, server.location = [], status, location
    if tls:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def receiver():
    server = serve()
    yield server
    server.shutdown()


@pytest.fixture
def dns(monkeypatch):
    """names -> list of answers, one per lookup (the last one repeats); lookups counted per name. Everything
    else (IP literals included, which is how a pinned connection dials) goes to the real getaddrinfo."""
    real = socket.getaddrinfo
    answers: dict[str, list[str]] = {}
    lookups: dict[str, int] = {}

    def fake(host, port, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        if name not in answers:
            return real(host, port, *args, **kwargs)
        n = lookups[name] = lookups.get(name, 0) + 1
        address = answers[name][min(n, len(answers[name])) - 1]
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port or 0))]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    fake.answers, fake.lookups = answers, lookups
    return fake


def config(url: str, fail: str = "closed", timeout_ms: int = 500):
    # not validated: a validated Config resolves the name once at save time, and the rebinding test needs the
    # call's own lookup to be the first one
    return Webhook.Config.model_construct(url=url, secret=SecretStr("s"), timeout_ms=timeout_ms, fail=fail,
                                          phases=["before"])


def call(cfg) -> HookContext:
    ctx = HookContext("before", cfg, "tenant", "req-1", {"messages": [{"role": "user", "content": "hi"}]})
    Webhook().hook(ctx)
    return ctx


@pytest.fixture
def logs():
    """What a graph process would write: root at DEBUG through the JSON formatter (httpx and httpcore too)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter("test"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield out
    root.removeHandler(handler)
    root.setLevel(level)


def test_rebinding_name_never_reaches_the_private_receiver(dns, receiver, monkeypatch):
    """Public to the check, 127.0.0.1 to any later lookup: the call connects to the public address it checked
    (unreachable here, so it fails) and never looks the name up a second time."""
    monkeypatch.delenv(ALLOW_PRIVATE_ENV, raising=False)
    dns.answers["rebind.test"] = [PUBLIC, "127.0.0.1"]
    with pytest.raises(Unavailable):
        call(config(f"http://rebind.test:{receiver.server_port}/hook", timeout_ms=300))
    assert receiver.seen == []
    assert dns.lookups == {"rebind.test": 1}


def test_call_time_check_sees_the_rebound_answer(dns, receiver, monkeypatch):
    """Saved while the name was public, called after it turned private: the call's one lookup is checked."""
    monkeypatch.delenv(ALLOW_PRIVATE_ENV, raising=False)
    dns.answers["rebind.test"] = [PUBLIC, "127.0.0.1"]
    cfg = Webhook.Config(url=f"http://rebind.test:{receiver.server_port}/hook", secret="s", fail="closed")
    with pytest.raises(Unavailable):
        call(cfg)
    assert receiver.seen == [] and dns.lookups == {"rebind.test": 2}  # one at save, one at call


def test_a_name_with_any_private_address_is_refused(monkeypatch):
    monkeypatch.delenv(ALLOW_PRIVATE_ENV, raising=False)
    real = socket.getaddrinfo

    def both(host, port, *args, **kwargs):
        if host != "mixed.test":
            return real(host, port, *args, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (PUBLIC, 0)),
                (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 0, 0, 0))]

    monkeypatch.setattr(socket, "getaddrinfo", both)
    with pytest.raises(BadRequest) as info:
        Webhook.Config(url="http://mixed.test/hook", secret="s")
    assert info.value.code == "webhook_target_refused" and "::1" in info.value.message


def test_allowed_private_target_is_reached_on_the_pinned_address_with_its_host_header(dns, receiver, monkeypatch):
    monkeypatch.setenv(ALLOW_PRIVATE_ENV, "1")
    dns.answers["hooks.internal.test"] = ["127.0.0.1"]
    cfg = Webhook.Config(url=f"http://hooks.internal.test:{receiver.server_port}/hook?x=1", secret="s")
    dns.lookups.clear()
    call(cfg)
    assert receiver.seen == [{"host": f"hooks.internal.test:{receiver.server_port}", "path": "/hook?x=1"}]
    assert dns.lookups == {"hooks.internal.test": 1}


def test_redirects_are_not_followed(dns, receiver, monkeypatch):
    monkeypatch.setenv(ALLOW_PRIVATE_ENV, "1")
    dns.answers["hooks.internal.test"] = ["127.0.0.1"]
    redirecting = serve(status=307, location=f"http://127.0.0.1:{receiver.server_port}/elsewhere")
    try:
        with pytest.raises(Unavailable):
            call(config(f"http://hooks.internal.test:{redirecting.server_port}/hook"))
        assert len(redirecting.seen) == 1 and receiver.seen == []
    finally:
        redirecting.shutdown()


def _certificate(tmp_path, name: str):
    """A self-signed certificate for `name` (its own CA): the key and cert files."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_file, cert_file = tmp_path / "key.pem", tmp_path / "cert.pem"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_file, cert_file


def test_tls_to_the_pinned_address_keeps_sni_and_checks_the_certificate_against_the_name(dns, tmp_path,
                                                                                            monkeypatch):
    key_file, cert_file = _certificate(tmp_path, "hooks.example.test")
    server_names = []
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert_file, key_file)
    tls.sni_callback = lambda sock, name, ctx: server_names.append(name)
    server = serve(tls=tls)
    monkeypatch.setenv(ALLOW_PRIVATE_ENV, "1")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))  # trust the test's CA, as an operator would theirs
    dns.answers["hooks.example.test"] = ["127.0.0.1"]
    dns.answers["other.example.test"] = ["127.0.0.1"]  # same address, a name the certificate does not cover
    try:
        call(config(f"https://hooks.example.test:{server.server_port}/hook"))
        assert server_names == ["hooks.example.test"]
        assert server.seen == [{"host": f"hooks.example.test:{server.server_port}", "path": "/hook"}]
        with pytest.raises(Unavailable):  # verified against the name, not waved through for the address
            call(config(f"https://other.example.test:{server.server_port}/hook"))
        assert len(server.seen) == 1
    finally:
        server.shutdown()


def test_failing_webhook_leaves_no_token_in_the_logs(receiver, logs, monkeypatch):
    """Refused connection, an HTTP error (httpx puts the URL in that message) and a success (httpx's INFO line
    names the URL): the token and the userinfo appear nowhere, the origin does."""
    monkeypatch.setenv(ALLOW_PRIVATE_ENV, "1")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    failing = serve(status=500)
    try:
        for port in (closed, failing.server_port):
            call(config(f"http://user:pa55word@127.0.0.1:{port}/hook/{TOKEN}?token={TOKEN}", fail="open"))
        call(config(f"http://127.0.0.1:{receiver.server_port}/hook?token={TOKEN}"))
    finally:
        failing.shutdown()
    text = logs.getvalue()
    assert TOKEN not in text and "pa55word" not in text and "user:" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    warnings = [d for d in lines if d["msg"] == "webhook plugin failed"]
    assert [d["url"] for d in warnings] == [f"http://127.0.0.1:{closed}", f"http://127.0.0.1:{failing.server_port}"]
    assert "500" in warnings[1]["error"] and f"http://127.0.0.1:{failing.server_port}" in warnings[1]["error"]
    assert any(d["logger"] == "httpx" and f"http://127.0.0.1:{receiver.server_port}" in d["msg"] for d in lines)


def test_upstream_base_url_is_redacted_in_logs_and_errors(logs, receiver):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    base = f"http://key:{TOKEN}@127.0.0.1:{closed}/tenant-{TOKEN}/v1?api-key={TOKEN}"
    upstream = Upstream("m", [Deployment.parse({"base_url": base, "connect_timeout": 1}, "m")], retries=0)
    with pytest.raises(UpstreamFailed) as info:
        upstream.call("/chat/completions", {"messages": []})
    with pytest.raises(UpstreamFailed):
        list(upstream.stream("/chat/completions", {"messages": []}))
    upstream.close()
    assert TOKEN not in str(info.value) and f"http://127.0.0.1:{closed}" in str(info.value)
    # a call that goes through: the HTTP client's DEBUG request line shows neither the path nor the query
    served = Upstream("m", [Deployment.parse({"base_url": f"http://127.0.0.1:{receiver.server_port}/t-{TOKEN}/v1"},
                                             "m")], retries=0)
    assert served.call(f"/chat/completions?api-key={TOKEN}", {"messages": []})["model"] == "m"
    served.close()
    text = logs.getvalue()
    assert TOKEN not in text and text.count(f'"upstream": "http://127.0.0.1:{closed}"') == 2
    assert f'http://127.0.0.1:{receiver.server_port} \\"POST <path> HTTP/1.1\\" 200' in text


@pytest.mark.parametrize("url, shown", [
    ("https://user:pw@Hooks.Example.com/p/a?token=x#f", "https://hooks.example.com"),
    ("http://10.0.0.1:8080/v1?key=x", "http://10.0.0.1:8080"),
    ("http://[::1]:9000/x", "http://[::1]:9000"),
    ("not a url", "<url>"),
    ("http:///nohost?token=x", "<url>"),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_redact_text_redacts_every_url_in_a_message():
    message = "Server error '500 X' for url 'http://127.0.0.1:9/h?token=abc'\nsee https://a.example/p?k=v"
    assert redact_text(message) == "Server error '500 X' for url 'http://127.0.0.1:9'\nsee https://a.example"
