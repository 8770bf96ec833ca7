"""The stored responses on the real PostgreSQL: per tenant, kept `retention_days` (older ones are not found), and
purged in batches by the writes themselves."""
import uuid

import psycopg2
import pytest

from scaigrid.adapters.sql import response_store
from scaigrid.adapters.sql.engine import sessions_for
from scaigrid.adapters.sql.response_store import ResponseRepository

pytestmark = pytest.mark.unit


def _id() -> str:
    return "resp_" + uuid.uuid4().hex


def _age(pg_url: str, response_id: str, days: int) -> None:
    with psycopg2.connect(pg_url) as conn, conn.cursor() as cur:
        cur.execute("UPDATE responses SET created_at = now() - make_interval(days => %s) WHERE id = %s",
                    (days, response_id))


def test_a_response_is_its_tenants_and_expires(pg_url, make_tenant):
    store = ResponseRepository(sessions_for(pg_url), retention_days=30)
    mine, other = make_tenant(), make_tenant()
    rid = _id()
    store.keep(rid, mine["id"], None, "m", [{"role": "user", "content": "hi"}], {"id": rid, "output": []})
    assert store.conversation(rid, mine["id"]) == ([{"role": "user", "content": "hi"}], {"id": rid, "output": []})
    typed = _id()  # U+0000 and a non-BMP character, as a client may type them: kept exactly
    store.keep(typed, mine["id"], None, "m", [{"role": "user", "content": "a\u0000b 🌊"}], {"id": typed})
    assert store.conversation(typed, mine["id"])[0] == [{"role": "user", "content": "a\u0000b 🌊"}]
    assert store.response(rid, other["id"]) is None and not store.delete(rid, other["id"])
    _age(pg_url, rid, 29)
    assert store.response(rid, mine["id"]) is not None
    _age(pg_url, rid, 31)
    assert store.response(rid, mine["id"]) is None  # expired: not found, even before the purge runs
    assert store.purge() >= 1
    assert not store.delete(rid, mine["id"])  # gone from the table


def test_every_hundredth_write_purges_a_batch(pg_url, make_tenant, monkeypatch):
    monkeypatch.setattr(response_store, "PURGE_EVERY", 3)
    store = ResponseRepository(sessions_for(pg_url), retention_days=30)
    tenant = make_tenant()
    old = [_id() for _ in range(2)]
    for rid in old:
        store.keep(rid, tenant["id"], None, "m", [], {"id": rid})
        _age(pg_url, rid, 40)
    fresh = _id()
    store.keep(fresh, tenant["id"], None, "m", [], {"id": fresh})  # the third write: the purge runs
    with psycopg2.connect(pg_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM responses WHERE id = ANY(%s)", (old + [fresh],))
        assert [row[0] for row in cur.fetchall()] == [fresh]
