"""The fast layer: pure logic, and single functions built with nameko's worker_factory over the real stores
(PostgreSQL, Redis). Nothing here starts a graph or a subprocess; `pytest -m unit` runs it alone, first in CI.

The stores: one freshly migrated PostgreSQL database for the whole session (dropped at its end), and one Redis
database of 8-15 claimed for the session (the graphs of the slow tests use db 0). A claimed database carries the
marker OWNED; one that holds keys without it belongs to someone else and is never used. Every tenant and key is
new per test, so tests share the stores without sharing state; the `scaigrid:*` keys go at the session's end."""
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis
from cachetools import TTLCache

from scaigrid.adapters.cache.health import client_for, health_for
from scaigrid.adapters.cache.key_cache import KeyCacheClient
from scaigrid.adapters.cache.limiter import LimiterClient
from scaigrid.adapters.sql.engine import engine_for, sessions_for
from scaigrid.adapters.sql.identity import IdentityRepository
from scaigrid.adapters.sql.ledger import LedgerRepository
from scaigrid.adapters.sql.migrate import upgrade
from scaigrid.functions.shared.api_keys import mint
from scaigrid.runtime.envelope import new_envelope
from scaigrid.runtime.testing import throwaway_database

HERE = Path(__file__).parent
CLAIM, OWNED = "scaigrid-unit-tests:claim", "scaigrid-unit-tests:owned"


def pytest_collection_modifyitems(items):
    for item in items:
        if HERE in Path(item.fspath).parents:
            item.add_marker(pytest.mark.unit)


# the stores ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def pg_url():
    """A migrated PostgreSQL database for the whole unit session."""
    with throwaway_database("sg_unit") as url:
        upgrade(url)
        yield url
        engine_for(url).dispose()


def _claim_redis_db() -> tuple[str, redis.Redis, str]:
    token = uuid.uuid4().hex
    for db in range(15, 7, -1):
        url = f"redis://127.0.0.1:6379/{db}"
        client = redis.Redis.from_url(url)
        if not client.set(CLAIM, token, nx=True, ex=900):
            continue  # another unit session has it
        if client.dbsize() > 1 and not client.exists(OWNED):
            client.delete(CLAIM)  # someone else's data: leave it alone
            continue
        client.set(OWNED, "tests/unit/conftest.py")
        return url, client, token
    pytest.fail("no free Redis database among 8-15 for the unit tests")


def _drop_scaigrid_keys(client: redis.Redis) -> None:
    keys = list(client.scan_iter("scaigrid:*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture(scope="session")
def redis_url():
    url, client, token = _claim_redis_db()
    _drop_scaigrid_keys(client)  # what a killed earlier session of ours left
    yield url
    _drop_scaigrid_keys(client)
    if client.get(CLAIM) == token.encode():
        client.delete(CLAIM)


@pytest.fixture(scope="session")
def redis_client(redis_url):
    return client_for(redis_url)


@pytest.fixture(scope="session")
def identity(pg_url):
    return IdentityRepository(sessions_for(pg_url))


@pytest.fixture(scope="session")
def ledger(pg_url):
    return LedgerRepository(engine_for(pg_url))


@pytest.fixture
def limiter(redis_url, redis_client):
    """The accounting function's LimiterClient (redis_down: open), with its limits marked loaded."""
    client = LimiterClient(redis_client, health_for(redis_url), "open")
    client.load([], {}, *client.periods(datetime.now(timezone.utc).timestamp()))
    return client


@pytest.fixture
def key_cache(redis_url, redis_client):
    """What KeyCache.get_dependency hands out: two first levels in this process, Redis behind them."""
    return KeyCacheClient(redis_client, TTLCache(100, 30), TTLCache(100, 5), 300, health_for(redis_url))


# identities ------------------------------------------------------------------------------------------------

@pytest.fixture
def make_tenant(identity):
    """make_tenant(platform=False) -> a new tenant's dict, named uniquely."""
    def make(platform: bool = False) -> dict:
        return identity.create_tenant(f"unit-{uuid.uuid4().hex[:12]}", None, is_platform=platform)
    return make


@pytest.fixture
def make_key(identity):
    """make_key(tenant, role="member", models=None, expires_in=None) -> (the key, its stored record)."""
    def make(tenant: dict, role: str = "member", models=None, expires_in: float | None = None) -> tuple[str, dict]:
        key, lookup, secret_hash = mint()
        expires = datetime.now(timezone.utc) + timedelta(seconds=expires_in) if expires_in is not None else None
        record = identity.create_key(tenant["id"], "unit", role, lookup, secret_hash, models, expires, None)
        return key, record
    return make


@pytest.fixture
def principal_of_key():
    """principal_of_key(record, tenant) -> the envelope principal auth.authenticate would set for that key."""
    def make(record: dict, tenant: dict) -> dict:
        return {"key_id": record["id"], "tenant_id": tenant["id"], "tenant_name": tenant["name"],
                "role": record["role"], "models": record["models"]}
    return make


@pytest.fixture
def caller(make_tenant, make_key, principal_of_key):
    """caller(role, tenant=None) -> a principal of a new key with that role (in a new tenant unless given);
    platform-admin keys live in a platform tenant."""
    def make(role: str, tenant: dict | None = None) -> dict:
        tenant = tenant or make_tenant(platform=role == "platform-admin")
        return principal_of_key(make_key(tenant, role)[1], tenant)
    return make


@pytest.fixture(scope="session")
def product_routes():
    from scaigrid.runtime.graph import load_graph

    return load_graph(HERE.parents[1] / "graph.yaml").routes


@pytest.fixture
def envelope(product_routes):
    """envelope(route, principal=None, body=None, path=None, query=None) -> the envelope the gateway would make:
    the request parsed (and validated) by the handler graph.yaml gives the route (the plain JSON one for a route
    it does not name), then the principal auth.authenticate would have set."""
    from werkzeug.test import EnvironBuilder
    from werkzeug.wrappers import Request

    from scaigrid.functions.gateway.http_api import HANDLERS

    def make(route: str, principal: dict | None = None, body=None, path=None, query=None) -> dict:
        handler = HANDLERS[product_routes[route].handler if route in product_routes else "json"]
        builder = EnvironBuilder(method="POST", path="/", query_string=query or {},
                                 **({} if body is None else {"json": body}))
        request = handler.parse(Request(builder.get_environ()), route, path or {})
        return new_envelope(route, request, principal=principal,
                            tenant=principal["tenant_id"] if principal else None)
    return make


# the embedding model's tokenizer ----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tokenizer():
    from tokenizers import Tokenizer

    from scaigrid.adapters.backends import model_dir_for

    path = model_dir_for("all-minilm-l6-v2") / "tokenizer.json"
    if not path.is_file():
        pytest.skip(f"{path} is missing: run `scaigrid models prepare` once")
    return Tokenizer.from_file(str(path))


# a graph with a priced model registry ------------------------------------------------------------------------

PRICED_GRAPH = """\
version: 1
functions:  # a registry is all accounting reads of it: no routes, no gateway
  inference:
    entry: scaigrid.functions.inference.service:Inference
    config:
      models:
        - {id: priced-chat, kind: chat, price: {prompt: 150, completion: 600}, max_tokens: 100, context_length: 2048}
        - {id: priced-embed, kind: embedding, price: {prompt: 20, completion: 999}, context_length: 512}
        - {kind: chat, price: {prompt: 1}}
  rag:
    entry: scaigrid.functions.rag.service:Rag
    config:
      models:
        - {id: free-chat, kind: chat, context_length: 512}
"""


@pytest.fixture(scope="session")
def priced_graph(tmp_path_factory):
    """A loaded graph whose registry prices priced-chat (150/600 per 1K tokens) and priced-embed (20 per 1K)."""
    from scaigrid.runtime.graph import load_graph

    path = tmp_path_factory.mktemp("graph") / "graph.yaml"
    path.write_text(PRICED_GRAPH)
    return load_graph(path)
