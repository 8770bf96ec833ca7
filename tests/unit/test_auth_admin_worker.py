"""The auth and admin functions alone (nameko's worker_factory) on the real IdentityRepository (PostgreSQL) and the
real KeyCacheClient (Redis): each 401 a key can get, the cache and its invalidation by a revoke or a disabled
tenant, and who may create tenants and keys of which role."""
import pytest
from cachetools import TTLCache
from nameko.testing.services import worker_factory

from scaigrid.adapters.cache.key_cache import KeyCacheClient
from scaigrid.functions.admin.service import Admin
from scaigrid.functions.auth.service import Auth
from scaigrid.functions.shared.api_keys import digest, lookup_of, mint
from scaigrid.runtime.errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized


@pytest.fixture
def auth(identity, key_cache):
    return worker_factory(Auth, identity=identity, keys=key_cache)


@pytest.fixture
def admin(identity, key_cache):
    return worker_factory(Admin, identity=identity, keys=key_cache)


@pytest.fixture
def call(envelope):
    """call(service, method, principal, **request) -> the envelope after the step."""
    def run(service, method: str, principal, **request):
        return getattr(service, method)(envelope(method, principal, **request))
    return run


@pytest.fixture
def login(auth, envelope):
    """login(key, model=None) -> what auth.authenticate makes of a chat request for `model` sent with that key
    (of a GET /v1/models, which names no model, without one)."""
    def run(key, model=None):
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        env = envelope("chat", body=body) if model else envelope("openai_models")
        env["secrets"]["api_key"] = key
        return auth.authenticate(env)
    return run


def refused(fn, *args, error=Unauthorized) -> str:
    with pytest.raises(error) as info:
        fn(*args)
    return info.value.code


# auth.authenticate ----------------------------------------------------------------------------------------------

def test_a_good_key_becomes_the_principal_and_leaves_the_envelope(login, make_tenant, make_key):
    tenant = make_tenant()
    key, record = make_key(tenant, "tenant-admin", models=["m1"])
    env = login(key, model="m1")
    assert "api_key" not in env["secrets"] and env["tenant"] == tenant["id"]
    assert env["principal"] == {"key_id": record["id"], "tenant_id": tenant["id"], "tenant_name": tenant["name"],
                                "role": "tenant-admin", "models": ["m1"]}


@pytest.mark.parametrize("key, code", [(None, "missing_api_key"), ("", "missing_api_key"),
                                       ("sk-not-ours", "invalid_api_key"),
                                       ("sg-0123456789abcdef.short", "invalid_api_key")])
def test_missing_and_malformed_keys(login, key, code):
    assert refused(login, key) == code


def test_an_unknown_lookup_is_remembered_as_missing(login, key_cache):
    key, lookup, _ = mint()
    assert refused(login, key) == "invalid_api_key"
    assert key_cache.negative.get(lookup) == {"missing": True}  # junk keys do not hammer PostgreSQL


def test_the_right_lookup_with_a_wrong_secret(login, make_tenant, make_key):
    key, _ = make_key(make_tenant())
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    assert lookup_of(forged) == lookup_of(key)
    assert refused(login, forged) == "invalid_api_key"


def test_an_expired_key(login, make_tenant, make_key):
    key, _ = make_key(make_tenant(), expires_in=-1)
    assert refused(login, key) == "expired_api_key"
    live, _ = make_key(make_tenant(), expires_in=3600)
    assert login(live)["principal"]


def test_the_model_allow_list(login, make_tenant, make_key):
    key, _ = make_key(make_tenant(), models=["allowed"])
    assert login(key, model="allowed")["principal"]
    assert login(key)["principal"]  # a route that names no model (GET /v1/models)
    assert refused(login, key, "other", error=Forbidden) == "model_not_allowed"


def test_the_cache_is_shared_through_redis(login, make_tenant, make_key, identity, redis_client, key_cache):
    key, _ = make_key(make_tenant())
    login(key)
    lookup = lookup_of(key)
    assert 0 < redis_client.ttl(f"scaigrid:key:{lookup}") <= 300
    other_process = KeyCacheClient(redis_client, TTLCache(10, 30), TTLCache(10, 5), 300, key_cache.health)
    entry = other_process.get(lookup)
    assert entry["secret_hash"] == digest(key) and entry == identity.credentials(lookup)


def test_a_revoke_stops_a_cached_key_at_once(login, admin, call, make_tenant, make_key, principal_of_key):
    tenant = make_tenant()
    key, record = make_key(tenant)
    _, manager = make_key(tenant, "tenant-admin")
    login(key)  # cached now, in this process and in Redis
    call(admin, "revoke_key", principal_of_key(manager, tenant), path={"key_id": record["id"]})
    assert refused(login, key) == "revoked_api_key"


def test_disabling_a_tenant_stops_its_cached_keys(login, admin, call, make_tenant, make_key, caller):
    tenant = make_tenant()
    key, _ = make_key(tenant)
    login(key)
    platform = caller("platform-admin")
    call(admin, "disable_tenant", platform, path={"tenant_id": tenant["id"]})
    assert refused(login, key) == "tenant_disabled"
    call(admin, "enable_tenant", platform, path={"tenant_id": tenant["id"]})
    assert login(key)["principal"]


# admin ------------------------------------------------------------------------------------------------------

def test_only_a_platform_admin_creates_tenants(admin, call, caller, identity):
    with pytest.raises(Forbidden) as info:
        call(admin, "create_tenant", caller("tenant-admin"), body={"name": "never"})
    assert info.value.code == "platform_admin_only"
    platform = caller("platform-admin")
    name = f"unit-made-{platform['key_id'][:8]}"
    made = call(admin, "create_tenant", platform, body={"name": name})["response"]
    assert made["name"] == name and made["status"] == "active" and not made["is_platform"]
    [event], _ = identity.list_audit(made["id"], 10, None)
    assert (event["action"], event["actor_key_id"]) == ("tenant.created", platform["key_id"])
    with pytest.raises(Conflict) as taken:
        call(admin, "create_tenant", platform, body={"name": name})
    assert (taken.value.code, taken.value.param) == ("tenant_exists", "name")


def test_a_new_key_is_shown_once_and_stored_as_a_hash(admin, call, caller, identity, login):
    manager = caller("tenant-admin")
    made = call(admin, "create_key", manager, path={"tenant_id": manager["tenant_id"]},
                body={"name": "ci", "models": ["m"]})["response"]
    assert made["role"] == "member" and made["prefix"] == "sg-" + lookup_of(made["key"])
    stored = identity.credentials(lookup_of(made["key"]))
    assert stored["secret_hash"] == digest(made["key"]) and made["key"] not in str(identity.get_key(made["id"]))
    assert login(made["key"], model="m")["principal"]["key_id"] == made["id"]


@pytest.mark.parametrize("creator", ["tenant-admin", "platform-admin"])
def test_platform_admin_keys_only_in_the_platform_tenant(admin, call, caller, make_tenant, creator):
    principal = caller(creator)
    tenant_id = principal["tenant_id"] if creator == "tenant-admin" else make_tenant()["id"]
    with pytest.raises(Forbidden) as info:
        call(admin, "create_key", principal, path={"tenant_id": tenant_id},
             body={"name": "up", "role": "platform-admin"})
    assert (info.value.code, info.value.param) == ("role_not_allowed", "role")
    if creator == "platform-admin":  # where they may: the platform tenant
        made = call(admin, "create_key", principal, path={"tenant_id": principal["tenant_id"]},
                    body={"name": "second", "role": "platform-admin"})["response"]
        assert made["role"] == "platform-admin"


def test_who_may_create_a_key_where(admin, call, caller):
    member, stranger = caller("member"), caller("tenant-admin")
    body = {"name": "k"}
    with pytest.raises(Forbidden) as info:
        call(admin, "create_key", member, path={"tenant_id": member["tenant_id"]}, body=body)
    assert info.value.code == "tenant_admin_only"
    with pytest.raises(NotFound) as info:  # another tenant looks like no tenant
        call(admin, "create_key", stranger, path={"tenant_id": member["tenant_id"]}, body=body)
    assert info.value.code == "tenant_not_found"
    with pytest.raises(NotFound):
        call(admin, "create_key", caller("platform-admin"), path={"tenant_id": "00000000-0000-0000-0000-000000000000"},
             body=body)


def test_expires_at_needs_a_timezone(admin, call, caller):
    manager = caller("tenant-admin")
    with pytest.raises(BadRequest) as info:
        call(admin, "create_key", manager, path={"tenant_id": manager["tenant_id"]},
             body={"name": "k", "expires_at": "2030-01-01T00:00:00"})
    assert info.value.param == "expires_at"
    made = call(admin, "create_key", manager, path={"tenant_id": manager["tenant_id"]},
                body={"name": "k", "expires_at": "2030-01-01T00:00:00Z"})["response"]
    assert made["expires_at"] == "2030-01-01T00:00:00Z"


def test_the_platform_tenant_cannot_be_disabled(admin, call, caller):
    platform = caller("platform-admin")
    with pytest.raises(Conflict) as info:
        call(admin, "disable_tenant", platform, path={"tenant_id": platform["tenant_id"]})
    assert info.value.code == "platform_tenant"


def test_keys_are_listed_in_pages(admin, call, caller, make_key, identity):
    manager = caller("tenant-admin")
    tenant = identity.get_tenant(manager["tenant_id"])
    made = {manager["key_id"]} | {make_key(tenant)[1]["id"] for _ in range(2)}
    first = call(admin, "list_keys", manager, path={"tenant_id": tenant["id"]}, query={"limit": 2})["response"]
    assert first["has_more"] and first["next_after"] == first["data"][-1]["id"]
    rest = call(admin, "list_keys", manager, path={"tenant_id": tenant["id"]},
                query={"limit": 2, "after": first["next_after"]})["response"]
    assert not rest["has_more"] and rest["next_after"] is None
    assert {k["id"] for k in first["data"] + rest["data"]} == made


def test_a_tenant_and_its_audit_are_its_own(admin, call, caller):
    outsider, manager = caller("member"), caller("tenant-admin")
    with pytest.raises(NotFound):
        call(admin, "get_tenant", outsider, path={"tenant_id": manager["tenant_id"]})
    assert call(admin, "get_tenant", manager, path={"tenant_id": manager["tenant_id"]})["response"]["id"] == \
        manager["tenant_id"]
    with pytest.raises(NotFound):
        call(admin, "audit", manager, query={"tenant_id": outsider["tenant_id"]})
    events = call(admin, "audit", manager)["response"]["data"]
    assert {e["action"] for e in events} == {"tenant.created", "key.created"}
    assert {e["tenant_id"] for e in events} == {manager["tenant_id"]}
