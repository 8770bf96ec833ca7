"""Secrets across hosts: one SCAIGRID_SECRET_KEY for every replica, rotation through `new,old`, a replica with
another key stopped at start-up, and the deploy files that require the key.

Live parts run `scaigrid up` processes against the real PostgreSQL, Redis and RabbitMQ, each with its own HOME
(a host of its own: a key file made there would differ from the others'), and test_plugins' webhook receiver,
which checks every call's signature with the secret the plugins are given.
"""
from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import httpx
import psycopg2
import pytest
import redis
import yaml
from cryptography.fernet import Fernet, InvalidToken

from conftest import bootstrap_key, launch
from test_plugins import Hook, webhook_server  # noqa: F401  (the receiver and its fixture)
from scaigrid.adapters import secrets
from scaigrid.adapters.sql.engine import sessions_for
from scaigrid.adapters.sql.plugin_store import PluginRepository
from scaigrid.runtime.deploy.compose import compose, env_example
from scaigrid.runtime.deploy.k8s import manifests, secrets_example
from scaigrid.runtime.deploy.systemd import units
from scaigrid.runtime.deploy.topology import load_topology
from scaigrid.runtime.deploy.values import DeployValues
from scaigrid.runtime.testing import SCAIGRID, Vhost, free_port

ROOT = Path(__file__).resolve().parent.parent
OLD, NEW, OTHER = (Fernet.generate_key().decode() for _ in range(3))

# every function inline: one process per host keeps two hosts cheap on a small machine
GRAPH = {
    "version": 1,
    "path": [str(ROOT / "tests" / "demo_functions")],
    "functions": {
        "gateway": {"entry": "scaigrid.functions.gateway.service:Gateway", "replicas": 1},
        "auth": {"entry": "scaigrid.functions.auth.service:Auth", "placement": "inline", "replicas": 0},
        "plugins": {"entry": "scaigrid.functions.plugins.service:Plugins", "placement": "inline", "replicas": 0},
        "admin": {"entry": "scaigrid.functions.admin.service:Admin", "placement": "inline", "replicas": 0},
        "parrot": {"entry": "demo:Parrot", "placement": "inline", "replicas": 0},
    },
    "routes": {
        "chat": {"http": "POST /v1/chat/completions",
                 "steps": ["auth.authenticate", "plugins.before", "parrot.chat", "plugins.after"]},
        "tenants_create": {"http": "POST /api/v1/tenants", "handler": "native",
                           "steps": ["auth.authenticate", "admin.create_tenant"]},
        "keys_create": {"http": "POST /api/v1/tenants/<tenant_id>/keys", "handler": "native",
                        "steps": ["auth.authenticate", "admin.create_key"]},
        "plugins_create": {"http": "POST /api/v1/plugins", "handler": "native",
                           "steps": ["auth.authenticate", "plugins.create"]},
    },
}


# --- adapters/secrets.py ----------------------------------------------------------------------------------------

@pytest.fixture
def no_key(monkeypatch, tmp_path):
    """No key configured anywhere, and the per-user key file under tmp_path."""
    monkeypatch.delenv(secrets.ENV, raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setattr(secrets, "KEY_FILE", tmp_path / "home" / "secret.key")
    return monkeypatch


def test_the_first_key_encrypts_and_every_key_decrypts(no_key):
    no_key.setenv(secrets.ENV, OLD)
    written_with_old = secrets.encrypt("s1")
    no_key.setenv(secrets.ENV, f" {NEW} , {OLD} ")  # spaces around the commas are forgiven
    assert secrets.decrypt(written_with_old) == "s1"
    written_with_new = secrets.encrypt("s2")
    assert Fernet(NEW).decrypt(written_with_new["$encrypted"].encode()) == b"s2"
    with pytest.raises(InvalidToken):
        Fernet(OLD).decrypt(written_with_new["$encrypted"].encode())
    rotated = secrets.rotate(written_with_old)
    no_key.setenv(secrets.ENV, NEW)  # old retired: what was rotated still opens, what was not does not
    assert secrets.decrypt(rotated) == "s1"
    with pytest.raises(secrets.SecretKeyError, match=f"^cannot decrypt a stored secret: {secrets.ENV} differs"):
        secrets.decrypt(written_with_old)


@pytest.mark.parametrize("value, where", [("not-a-key", "the key"), (f"{NEW},short", "key 2 of 2"),
                                          (f"{NEW},", "key 2 of 2 is empty")])
def test_a_malformed_key_names_the_variable_and_not_the_key(no_key, value, where):
    no_key.setenv(secrets.ENV, value)
    with pytest.raises(secrets.SecretKeyError) as raised:
        secrets.check_key()
    message = str(raised.value)
    assert message.startswith(f"{secrets.ENV}: {where}") and "\n" not in message
    assert NEW not in message and "not-a-key" not in message and "short" not in message


def test_a_systemd_credential_is_read_and_no_key_file_is_made(no_key, tmp_path):
    (tmp_path / secrets.CREDENTIAL).write_text(f"{NEW},{OLD}\n")
    no_key.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert Fernet(NEW).decrypt(secrets.encrypt("x")["$encrypted"].encode()) == b"x"
    assert "systemd credential" in secrets.key_source()
    assert not secrets.KEY_FILE.exists()


def test_without_a_key_one_host_makes_its_own_file_but_only_when_it_needs_one(no_key):
    secrets.check_key()  # start-up with nothing stored must not make a file (a read-only container would fail)
    assert not secrets.KEY_FILE.exists()
    assert secrets.decrypt(secrets.encrypt("x")) == "x"
    assert stat.S_IMODE(secrets.KEY_FILE.stat().st_mode) == 0o600
    assert "is not set" in secrets.key_source()


# --- the deploy files require the key ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def topology():
    return load_topology(ROOT / "graph.yaml", DeployValues())


def test_compose_requires_the_key_from_the_operators_env(topology):
    services = compose(topology, DeployValues())["services"]
    functions = [u.name for u in topology.units]
    for name in functions:
        assert services[name]["environment"][secrets.ENV].startswith(f"${{{secrets.ENV}:?")
    assert f"\n{secrets.ENV}=\n" in env_example(topology)
    assert all(secrets.ENV not in str(services[s]) for s in services if s not in functions)  # not the stores'


def test_kubernetes_requires_the_key_from_the_secret(topology):
    values = DeployValues()
    deployments = [d for d in manifests(topology, values) if d["kind"] == "Deployment"]
    assert len(deployments) == len(topology.units)
    for dep in deployments:
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        (entry,) = [e for e in container["env"] if e["name"] == secrets.ENV]
        assert entry["valueFrom"]["secretKeyRef"] == {"name": values.secret, "key": secrets.ENV, "optional": False}
    assert f"\n{secrets.ENV}=CHANGE-ME\n" in secrets_example(topology, values)
    assert all(secrets.ENV not in str(d.get("data")) for d in manifests(topology, values) if d["kind"] == "ConfigMap")


def test_systemd_loads_the_key_as_a_credential(topology):
    files = units(topology, DeployValues())
    for unit in topology.units:
        text = files[f"scaigrid-{unit.name}@.service"]
        assert f"\nLoadCredential={secrets.CREDENTIAL}:/etc/scaigrid/secret.key\n" in text
    assert not any(line.startswith(secrets.ENV) for line in files["scaigrid.env.example"].splitlines())


# --- live: two hosts, rotation, a replica with another key --------------------------------------------------------

@pytest.fixture(scope="module")
def deployment(database_url, tmp_path_factory):
    """One database and graph; `host(name, key)` runs `scaigrid up` as a host of its own (own HOME)."""
    tmp = tmp_path_factory.mktemp("secrets")
    graph = tmp / "graph.yaml"
    graph.write_text(yaml.safe_dump(GRAPH))
    admin = {"Authorization": f"Bearer {bootstrap_key(database_url)}"}
    running = []

    def env(name: str, key: str | None) -> dict:
        home = tmp / f"home-{name}"
        home.mkdir(exist_ok=True)
        out = {"HOME": str(home), "SCAIGRID_DATABASE_URL": database_url, "SCAIGRID_WEBHOOK_ALLOW_PRIVATE": "1"}
        return {**out, secrets.ENV: key} if key is not None else out

    def host(name: str, key: str):
        (tmp / name).mkdir()
        running.append(launch(graph, tmp / name, env(name, key)))
        return running[-1]

    host.graph, host.env, host.admin, host.tmp = graph, env, admin, tmp
    yield host
    for process in running:
        process.stop()


@pytest.fixture(scope="module")
def old_host(deployment):
    """A host with the key OLD, for the whole module."""
    return deployment("old", OLD)


def tenant(gateway, admin: dict) -> dict:
    """A new tenant and an admin key of it, made through `gateway`: headers for its requests."""
    made = httpx.post(gateway.base_url + "/api/v1/tenants", json={"name": f"t-{os.urandom(4).hex()}"},
                      headers=admin).json()
    key = httpx.post(f"{gateway.base_url}/api/v1/tenants/{made['id']}/keys", headers=admin,
                     json={"name": "k", "role": "tenant-admin"}).json()
    return {"Authorization": f"Bearer {key['key']}"}


def add_webhook(gateway, headers: dict, url: str, name: str) -> str:
    r = httpx.post(gateway.base_url + "/api/v1/plugins", headers=headers, json={
        "name": name, "kind": "webhook", "config": {"url": url, "secret": Hook.secret, "phases": ["before"]}})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def signed_calls(gateway, headers: dict) -> list[bool]:
    """One chat through `gateway`: for each webhook call it made, whether its signature was right."""
    Hook.seen.clear()
    r = httpx.post(gateway.base_url + "/v1/chat/completions", headers=headers, timeout=30,
                   json={"model": "parrot", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    return [call["valid"] for call in Hook.seen]


def stored_token(database_url: str, plugin_id: str) -> bytes:
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT config FROM plugins WHERE id = %s", (plugin_id,))
        return cur.fetchone()[0]["secret"]["$encrypted"].encode()


def test_two_hosts_with_one_key_both_serve_a_tenants_signed_webhook(deployment, old_host, webhook_server):
    a, b = old_host, deployment("b", OLD)
    headers = tenant(a, deployment.admin)
    add_webhook(a, headers, webhook_server, "two-hosts")
    assert signed_calls(a, headers) == [True]
    assert signed_calls(b, headers) == [True]  # b decrypts what a encrypted
    assert not list(deployment.tmp.glob("home-*/.config/scaigrid/secret.key"))  # the key, not a file per host


def test_rotation_new_old_decrypts_the_old_and_encrypts_with_the_new(deployment, old_host, webhook_server,
                                                                     database_url, monkeypatch):
    headers = tenant(old_host, deployment.admin)
    first = add_webhook(old_host, headers, webhook_server, "before-rotation")
    both = deployment("rot-both", f"{NEW},{OLD}")
    assert signed_calls(both, headers) == [True]
    second = add_webhook(both, headers, webhook_server, "after-rotation")
    Fernet(NEW).decrypt(stored_token(database_url, second))
    with pytest.raises(InvalidToken):
        Fernet(OLD).decrypt(stored_token(database_url, second))
    assert signed_calls(both, headers) == [True, True]
    # re-encrypt what is stored with the first key; then the old key can go
    monkeypatch.setenv(secrets.ENV, f"{NEW},{OLD}")
    repository = PluginRepository(sessions_for(database_url), redis.Redis(), ttl=30)
    assert repository.rotate_secrets() >= 2
    Fernet(NEW).decrypt(stored_token(database_url, first))
    only_new = deployment("rot-new", NEW)
    assert signed_calls(only_new, headers) == [True, True]


def start_failing(deployment, name: str, key: str | None) -> subprocess.CompletedProcess:
    """`scaigrid run gateway` (as a pod or container runs it) with `key`; it must stop by itself."""
    vhost = Vhost()
    env = {**os.environ, **deployment.env(name, key), "SCAIGRID_AMQP_URI": vhost.uri,
           "SCAIGRID_HTTP_ADDRESS": f"127.0.0.1:{free_port()}"}
    if key is None:
        env.pop(secrets.ENV, None)
    try:
        return subprocess.run([*SCAIGRID, "run", "gateway", "--graph", str(deployment.graph)], env=env,
                              capture_output=True, text=True, timeout=90)
    finally:
        vhost.delete()


@pytest.mark.parametrize("name, key, source", [
    ("other", OTHER, secrets.ENV),
    ("unset", None, "the key file"),  # the per-host file a container would make: refused as well
], ids=["another-key", "no-key"])
def test_a_replica_that_cannot_decrypt_fails_at_start_up_with_one_line(deployment, old_host, webhook_server, name,
                                                                        key, source):
    add_webhook(old_host, tenant(old_host, deployment.admin), webhook_server, f"stored-{name}")
    done = start_failing(deployment, f"replica-{name}", key)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    lines = [line for line in output.splitlines() if "cannot decrypt" in line]
    assert len(lines) == 1, output
    (line,) = lines
    assert line.startswith(f"scaigrid: {source}") and "cannot decrypt the stored plugin secrets" in line
    assert line.endswith("set the deployment's key on every replica")
    assert "Traceback" not in output and OTHER not in output and OLD not in output


def test_a_malformed_key_fails_at_start_up_without_showing_it(deployment):
    done = start_failing(deployment, "malformed", f"{OLD},oops-not-a-key")
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    (line,) = [line for line in output.splitlines() if line.startswith(f"scaigrid: {secrets.ENV}")]
    assert "key 2 of 2 is not a Fernet key" in line
    assert "Traceback" not in output and "oops-not-a-key" not in output and OLD not in output
