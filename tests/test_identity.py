"""Auth, tenants, keys, roles and the audit log through the running product graph (graph.yaml) and PostgreSQL."""
import hashlib
import subprocess
import time
from pathlib import Path

import httpx
import psycopg2
import pytest
from openai import NotFoundError, OpenAI

from conftest import bootstrap_key, launch
from scaigrid.runtime.testing import SCAIGRID

REPO = Path(__file__).resolve().parents[1]


class Api:
    def __init__(self, base_url: str, key: str | None):
        self.base_url, self.key = base_url, key

    def __call__(self, method: str, path: str, body=None, **params):
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        return httpx.request(method, self.base_url + path, json=body, params=params or None, headers=headers,
                             timeout=30)


@pytest.fixture(scope="module")
def product(database_url, tmp_path_factory):
    """graph.yaml as shipped, on a fresh database, with its first platform-admin key."""
    key = bootstrap_key(database_url)
    graph = launch(REPO / "graph.yaml", tmp_path_factory.mktemp("product"),
                   env={"SCAIGRID_DATABASE_URL": database_url})
    graph.admin = Api(graph.base_url, key)
    graph.database_url = database_url
    yield graph
    graph.stop()


@pytest.fixture(scope="module")
def tenants(product):
    """Two tenants, each with a tenant admin and a member key."""
    out = {}
    for name in ("acme", "globex"):
        tenant = product.admin("POST", "/api/v1/tenants", {"name": name}).json()
        keys = {role: product.admin("POST", f"/api/v1/tenants/{tenant['id']}/keys",
                                    {"name": f"{name}-{role}", "role": role}).json()
                for role in ("tenant-admin", "member")}
        out[name] = {"tenant": tenant, "keys": keys,
                     "admin": Api(product.base_url, keys["tenant-admin"]["key"]),
                     "member": Api(product.base_url, keys["member"]["key"])}
    return out


def test_bootstrap_runs_once(product):
    assert product.admin.key.startswith("sg-")
    again = subprocess.run([*SCAIGRID, "admin", "bootstrap"], capture_output=True, text=True, timeout=60,
                           env={"SCAIGRID_DATABASE_URL": product.database_url, "PATH": "/usr/bin:/bin"})
    assert again.returncode == 1 and "exists already" in again.stderr and "sg-" not in again.stdout


def test_key_is_shown_once_and_stored_only_as_a_hash(product, tenants):
    created = tenants["acme"]["keys"]["member"]
    assert created["key"].startswith(created["prefix"] + ".")
    listed = product.admin("GET", f"/api/v1/tenants/{tenants['acme']['tenant']['id']}/keys").json()["data"]
    assert all("key" not in k for k in listed) and created["id"] in {k["id"] for k in listed}
    with psycopg2.connect(product.database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT secret_hash, lookup FROM api_keys WHERE id = %s", (created["id"],))
        secret_hash, lookup = cur.fetchone()
        cur.execute("SELECT count(*) FROM api_keys, audit_events WHERE position(%s in api_keys::text) > 0 "
                    "OR position(%s in audit_events::text) > 0", (created["key"], created["key"]))
        assert cur.fetchone()[0] == 0
    assert secret_hash == hashlib.sha256(created["key"].encode()).hexdigest()
    assert created["prefix"] == f"sg-{lookup}"
    assert created["key"] not in product.log_path.read_text()  # nor logged


@pytest.mark.parametrize("header, code", [
    (None, "missing_api_key"),
    ("Bearer", "missing_api_key"),
    ("Basic dXNlcjpwYXNz", "missing_api_key"),
    ("Bearer not-a-key", "invalid_api_key"),
    ("Bearer sg-0123456789abcdef." + "A" * 43, "invalid_api_key"),
])
def test_bad_keys_get_401_in_openai_format(product, header, code):
    r = httpx.get(product.base_url + "/v1/models", headers={"Authorization": header} if header else {})
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error" and r.json()["error"]["code"] == code


def test_right_lookup_wrong_secret_is_rejected(product, tenants):
    key = tenants["acme"]["keys"]["member"]["key"]
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    assert Api(product.base_url, key)("GET", "/v1/models").status_code == 200  # warm the cache first
    r = Api(product.base_url, forged)("GET", "/v1/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_expired_key(product, tenants):
    tid = tenants["acme"]["tenant"]["id"]
    soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 2))
    created = product.admin("POST", f"/api/v1/tenants/{tid}/keys", {"name": "brief", "expires_at": soon}).json()
    api = Api(product.base_url, created["key"])
    assert api("GET", "/api/v1/me").status_code == 200
    time.sleep(2.5)
    r = api("GET", "/api/v1/me")
    assert r.status_code == 401 and r.json()["error"]["code"] == "expired_api_key"


def test_revoked_key_stops_at_once(product, tenants):
    tid = tenants["acme"]["tenant"]["id"]
    created = product.admin("POST", f"/api/v1/tenants/{tid}/keys", {"name": "doomed"}).json()
    api = Api(product.base_url, created["key"])
    assert api("GET", "/api/v1/me").status_code == 200  # now cached in the gateway and in Redis
    assert tenants["acme"]["admin"]("DELETE", f"/api/v1/keys/{created['id']}").json()["revoked_at"]
    r = api("GET", "/api/v1/me")
    assert r.status_code == 401 and r.json()["error"]["code"] == "revoked_api_key"


def test_models_follow_the_allow_list(product, tenants):
    tid = tenants["globex"]["tenant"]["id"]
    narrow = product.admin("POST", f"/api/v1/tenants/{tid}/keys",
                           {"name": "narrow", "models": ["all-minilm-l6-v2"]}).json()
    api = Api(product.base_url, narrow["key"])
    ids = [m["id"] for m in api("GET", "/v1/models").json()["data"]]
    assert ids == ["all-minilm-l6-v2"]
    one = api("GET", "/v1/models/all-minilm-l6-v2")
    assert one.status_code == 200, one.text
    card = one.json()
    assert (card["id"], card["object"], card["kind"], card["backend"], card["context_length"]) == \
        ("all-minilm-l6-v2", "model", "embedding", "onnx", 512)
    sdk = OpenAI(base_url=product.base_url + "/v1", api_key=narrow["key"], max_retries=0)
    assert sdk.models.retrieve("all-minilm-l6-v2").owned_by == "scaigrid"  # what the official client reads
    with pytest.raises(NotFoundError):
        sdk.models.retrieve("smollm2-135m-instruct")
    for headers in ({}, {"Authorization": "Bearer sg-" + "0" * 40}):  # no key, a forged one: nothing said
        r = httpx.get(product.base_url + "/v1/models/all-minilm-l6-v2", headers=headers, timeout=30)
        assert r.status_code == 401 and "all-minilm" not in r.text, r.text
    for hidden in ("smollm2-135m-instruct", "no-such-model", "org/no-such-model", "x" * 4000):  # not allowed = none
        r = api("GET", f"/v1/models/{hidden}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text
        assert hidden in r.json()["error"]["message"]
    everything = [m["id"] for m in tenants["globex"]["member"]("GET", "/api/v1/models").json()["data"]]
    assert {"smollm2-135m-instruct", "all-minilm-l6-v2"} <= set(everything)


def test_me(tenants):
    me = tenants["acme"]["member"]("GET", "/api/v1/me").json()
    assert me["role"] == "member" and me["tenant"]["name"] == "acme" and me["key"]["name"] == "acme-member"


# --- tenant isolation, route by route -------------------------------------------------------------------
def test_tenant_admin_cannot_reach_another_tenant(tenants):
    acme, globex = tenants["acme"]["admin"], tenants["globex"]
    gid = globex["tenant"]["id"]
    for method, path, body in [
        ("GET", f"/api/v1/tenants/{gid}", None),
        ("GET", f"/api/v1/tenants/{gid}/keys", None),
        ("POST", f"/api/v1/tenants/{gid}/keys", {"name": "intruder"}),
        ("DELETE", f"/api/v1/keys/{globex['keys']['member']['id']}", None),
    ]:
        r = acme(method, path, body)
        assert r.status_code == 404, (method, path, r.text)
    r = acme("GET", "/api/v1/audit", tenant_id=gid)
    assert r.status_code == 404
    assert globex["member"]("GET", "/api/v1/me").status_code == 200  # untouched


@pytest.mark.parametrize("method, path, body", [
    ("GET", "/api/v1/tenants", None),
    ("POST", "/api/v1/tenants", {"name": "rogue"}),
    ("POST", "/api/v1/tenants/{own}/disable", None),
    ("POST", "/api/v1/tenants/{own}/enable", None),
    ("GET", "/api/v1/graph", None),
])
def test_platform_routes_refuse_tenant_admins(tenants, method, path, body):
    own = tenants["acme"]["tenant"]["id"]
    r = tenants["acme"]["admin"](method, path.format(own=own), body)
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"


def test_member_cannot_manage_keys(tenants):
    acme = tenants["acme"]
    own = acme["tenant"]["id"]
    for method, path, body in [
        ("GET", f"/api/v1/tenants/{own}/keys", None),
        ("POST", f"/api/v1/tenants/{own}/keys", {"name": "self-promotion", "role": "tenant-admin"}),
        ("DELETE", f"/api/v1/keys/{acme['keys']['tenant-admin']['id']}", None),
        ("GET", "/api/v1/audit", None),
    ]:
        r = acme["member"](method, path, body)
        assert r.status_code == 403, (method, path, r.text)


def test_tenant_admin_cannot_mint_platform_admins(tenants):
    own = tenants["acme"]["tenant"]["id"]
    r = tenants["acme"]["admin"]("POST", f"/api/v1/tenants/{own}/keys", {"name": "x", "role": "platform-admin"})
    assert r.status_code == 403 and r.json()["error"]["param"] == "role"


def test_disabled_tenant_keys_stop_working(product):
    tenant = product.admin("POST", "/api/v1/tenants", {"name": "initech"}).json()
    key = product.admin("POST", f"/api/v1/tenants/{tenant['id']}/keys", {"name": "k"}).json()["key"]
    api = Api(product.base_url, key)
    assert api("GET", "/api/v1/me").status_code == 200
    assert product.admin("POST", f"/api/v1/tenants/{tenant['id']}/disable").json()["status"] == "disabled"
    r = api("GET", "/api/v1/me")
    assert r.status_code == 401 and r.json()["error"]["code"] == "tenant_disabled"
    assert product.admin("POST", f"/api/v1/tenants/{tenant['id']}/enable").json()["status"] == "active"
    assert api("GET", "/api/v1/me").status_code == 200


def test_platform_tenant_cannot_be_disabled(product):
    me = product.admin("GET", "/api/v1/me").json()
    r = product.admin("POST", f"/api/v1/tenants/{me['tenant']['id']}/disable")
    assert r.status_code == 409


# --- the native API's manners ---------------------------------------------------------------------------
@pytest.mark.parametrize("body, param", [
    ({}, "name"),
    ({"name": ""}, "name"),
    ({"name": "ok", "role": "boss"}, "role"),
    ({"name": "ok", "models": "all"}, "models"),
    ({"name": "ok", "expires_at": "tomorrow"}, "expires_at"),
    ({"name": "ok", "expires_at": "2030-01-01T00:00:00"}, "expires_at"),
    ({"name": "ok", "colour": "blue"}, "colour"),
])
def test_validation_errors_name_the_field(tenants, body, param):
    own = tenants["acme"]["tenant"]["id"]
    r = tenants["acme"]["admin"]("POST", f"/api/v1/tenants/{own}/keys", body)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param and param in r.json()["error"]["message"]


def test_duplicate_tenant_is_a_conflict(product, tenants):
    r = product.admin("POST", "/api/v1/tenants", {"name": "acme"})
    assert r.status_code == 409 and r.json()["error"]["param"] == "name"


def test_pagination_walks_every_key_once(product):
    tenant = product.admin("POST", "/api/v1/tenants", {"name": "paged"}).json()
    made = {product.admin("POST", f"/api/v1/tenants/{tenant['id']}/keys", {"name": f"k{i}"}).json()["id"]
            for i in range(7)}
    seen, after = [], None
    while True:
        page = product.admin("GET", f"/api/v1/tenants/{tenant['id']}/keys", limit=3,
                             **({"after": after} if after else {})).json()
        seen += [k["id"] for k in page["data"]]
        if not page["has_more"]:
            break
        after = page["next_after"]
    assert len(seen) == 7 and set(seen) == made
    r = product.admin("GET", f"/api/v1/tenants/{tenant['id']}/keys", limit=0)
    assert r.status_code == 400 and r.json()["error"]["param"] == "limit"


def test_audit_log_scoped_by_tenant(product, tenants):
    acme = tenants["acme"]
    victim = acme["admin"]("POST", f"/api/v1/tenants/{acme['tenant']['id']}/keys", {"name": "audited"}).json()
    acme["admin"]("DELETE", f"/api/v1/keys/{victim['id']}")
    own = acme["admin"]("GET", "/api/v1/audit", limit=100).json()["data"]
    assert {e["tenant_id"] for e in own} == {acme["tenant"]["id"]}
    revoked = [e for e in own if e["action"] == "key.revoked" and e["target_id"] == victim["id"]]
    assert revoked and revoked[0]["actor_key_id"] == acme["keys"]["tenant-admin"]["id"] and revoked[0]["request_id"]
    everything = product.admin("GET", "/api/v1/audit", limit=100).json()["data"]
    actions = {e["action"] for e in everything}
    assert {"tenant.created", "key.created", "key.revoked"} <= actions
    assert len({e["tenant_id"] for e in everything}) >= 3
    disabled = product.admin("GET", "/api/v1/audit", limit=100).json()
    assert disabled["object"] == "list"


def test_openapi_document_and_offline_docs(product):
    doc = httpx.get(product.base_url + "/api/v1/openapi.json").json()
    assert doc["openapi"] == "3.1.0"
    assert {"/api/v1/tenants", "/api/v1/tenants/{tenant_id}/keys", "/api/v1/keys/{key_id}", "/api/v1/me",
            "/api/v1/audit", "/api/v1/models"} <= set(doc["paths"])
    create = doc["paths"]["/api/v1/tenants/{tenant_id}/keys"]["post"]
    assert "201" in create["responses"] and create["security"] == [{"bearer": []}]
    page = httpx.get(product.base_url + "/api/v1/docs").text
    assert "http://" not in page and "https://" not in page  # nothing from a CDN
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        r = httpx.get(product.base_url + f"/api/v1/docs/assets/{asset}")
        assert r.status_code == 200 and len(r.content) > 10_000


def test_no_native_route_reaches_another_tenant(product, tenants):
    """Every route of the OpenAPI document that names a tenant, key or plugin, called by tenant A's admin with
    tenant B's ids: nothing succeeds, and B's keys still work afterwards."""
    acme, globex = tenants["acme"], tenants["globex"]
    plugin = globex["admin"]("POST", "/api/v1/plugins", {"name": "p", "kind": "max_tokens_clamp",
                                                          "config": {"max_tokens": 5}}).json()
    ids = {"tenant_id": globex["tenant"]["id"], "key_id": globex["keys"]["member"]["id"], "plugin_id": plugin["id"]}
    bodies = {"POST": {"name": "x"}, "PUT": {"rpm": 1}, "PATCH": {"enabled": False}}
    doc = httpx.get(product.base_url + "/api/v1/openapi.json").json()
    tried = 0
    for path, methods in doc["paths"].items():
        if not any("{" + name + "}" in path for name in ids):
            continue
        for method in methods:
            url = path.format(**ids)
            r = acme["admin"](method.upper(), url, bodies.get(method.upper()))
            assert r.status_code in (400, 403, 404), (method, url, r.status_code, r.text)
            tried += 1
    assert tried >= 10
    r = acme["admin"]("GET", "/api/v1/usage", tenant_id=ids["tenant_id"])
    assert r.status_code == 404
    assert globex["member"]("GET", "/api/v1/me").status_code == 200
    assert globex["admin"]("GET", "/api/v1/plugins").json()["data"][0]["enabled"] is True
