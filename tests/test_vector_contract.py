"""The VectorStore contract, run against every backend: pgvector always (a fresh database for this module), Weaviate
when SCAIGRID_TEST_WEAVIATE_URL is set and adapters/vector/weaviate.py exists. Vectors are synthetic unit vectors
with chosen cosines, so no model is needed. Then pgvector's own guarantees (HNSW really used, partitions), then the
pure rank fusion."""
import concurrent.futures as cf
import importlib.util
import math
import os
import uuid

import numpy as np
import pytest
from sqlalchemy import event, text

from scaigrid.adapters.sql.engine import engine_for
from scaigrid.adapters.sql.migrate import upgrade
from scaigrid.adapters.vector.base import CollectionNotFound, DimensionMismatch, VectorStore
from scaigrid.adapters.vector.fusion import reciprocal_rank_fusion

DIM = 384  # all-MiniLM-L6-v2's width, the default embedding model
WEAVIATE_URL = os.environ.get("SCAIGRID_TEST_WEAVIATE_URL")
BACKENDS = ["pgvector",
            pytest.param("weaviate", marks=pytest.mark.skipif(
                not WEAVIATE_URL, reason="set SCAIGRID_TEST_WEAVIATE_URL to run the contract against Weaviate"))]


# fixtures and vectors -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def migrated(database_url):
    upgrade(database_url)
    yield database_url
    engine_for(database_url).dispose()  # lru-cached per URL: let the throwaway database go


@pytest.fixture(scope="module", params=BACKENDS)
def store(request) -> VectorStore:
    if request.param == "pgvector":
        from scaigrid.adapters.vector.pgvector import PgVectorStore

        yield PgVectorStore(engine_for(request.getfixturevalue("migrated")))
        return
    # The Weaviate slot: fill it by writing adapters/vector/weaviate.py with a WeaviateStore(url).
    try:
        from scaigrid.adapters.vector.weaviate import WeaviateStore
    except ImportError:
        pytest.skip("adapters/vector/weaviate.py is not written yet")
    backend = WeaviateStore(WEAVIATE_URL)
    yield backend
    backend.close()


@pytest.fixture
def name():
    """A collection name of this test's own, so tests sharing the module's database never meet."""
    return f"c-{uuid.uuid4().hex[:10]}"


def unit(seed: int, dim: int = DIM) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=dim)
    return v / np.linalg.norm(v)


def at_cosine(query: np.ndarray, cosine: float, seed: int) -> list[float]:
    """A unit vector whose cosine with `query` (a unit vector) is exactly `cosine`."""
    other = unit(10_000 + seed, len(query))  # never the query itself
    other = other - (other @ query) * query
    other /= np.linalg.norm(other)
    return (cosine * query + math.sqrt(1 - cosine ** 2) * other).tolist()


def chunk(cid: str, doc: str, text_: str, vector, **metadata) -> dict:
    return {"id": cid, "document_id": doc, "text": text_, "vector": list(vector), "metadata": metadata}


# the contract ---------------------------------------------------------------------------------------------------

def test_vector_search_orders_by_cosine(store, name):
    store.ensure_collection("acme", name, DIM)
    q = unit(1)
    cosines = {"c-far": -0.5, "c-90": 0.0, "c-30": 0.3, "c-95": 0.95, "c-60": 0.6, "c-80": 0.8}
    assert store.upsert("acme", name, [chunk(cid, f"d-{cid}", cid, at_cosine(q, c, seed=i))
                                       for i, (cid, c) in enumerate(cosines.items())]) == 6
    hits = store.search_vector("acme", name, q.tolist(), k=4)
    assert [h["chunk_id"] for h in hits] == ["c-95", "c-80", "c-60", "c-30"]
    for h in hits:
        assert h["score"] == pytest.approx(cosines[h["chunk_id"]], abs=1e-4)  # float4 storage
        assert h["document_id"] == f"d-{h['chunk_id']}" and h["text"] == h["chunk_id"] and h["metadata"] == {}
    everything = store.search_vector("acme", name, q.tolist(), k=50)
    assert [h["chunk_id"] for h in everything] == sorted(cosines, key=cosines.get, reverse=True)


def test_upsert_replaces_a_chunk_with_the_same_id(store, name):
    store.ensure_collection("acme", name, DIM)
    q = unit(2)
    store.upsert("acme", name, [chunk("c1", "d1", "old text", at_cosine(q, 0.1, 1), v=1),
                                chunk("c2", "d1", "other", at_cosine(q, 0.5, 2))])
    store.upsert("acme", name, [chunk("c1", "d2", "new text", q, v=2)])
    hits = store.search_vector("acme", name, q.tolist(), k=10)
    assert [(h["chunk_id"], h["document_id"], h["text"], h["metadata"]) for h in hits] == [
        ("c1", "d2", "new text", {"v": 2}), ("c2", "d1", "other", {})]
    assert store.search_keyword("acme", name, "old", k=10) == []
    # the same id twice in one batch: the last one wins, no error
    assert store.upsert("acme", name, [chunk("c3", "d3", "first", q), chunk("c3", "d3", "second", q)]) == 1
    assert [h["text"] for h in store.search_keyword("acme", name, "first second", k=10)] == ["second"]


def test_collections_keep_their_dimensions(store, name):
    store.ensure_collection("acme", name, DIM)
    store.ensure_collection("acme", name, DIM)  # idempotent
    with pytest.raises(DimensionMismatch):
        store.ensure_collection("acme", name, 128)
    with pytest.raises(DimensionMismatch):
        store.upsert("acme", name, [chunk("c1", "d1", "x", unit(1, 128))])
    with pytest.raises(DimensionMismatch):
        store.search_vector("acme", name, unit(1, 128).tolist())
    store.ensure_collection("acme", name + "-small", 8)  # another collection, another width
    store.upsert("acme", name + "-small", [chunk("c1", "d1", "x", unit(1, 8))])
    assert store.search_vector("acme", name + "-small", unit(1, 8).tolist(), k=1)[0]["chunk_id"] == "c1"


def test_missing_collections(store, name):
    with pytest.raises(CollectionNotFound):
        store.search_vector("acme", name, unit(1).tolist())
    with pytest.raises(CollectionNotFound):
        store.search_keyword("acme", name, "anything")
    with pytest.raises(CollectionNotFound):
        store.upsert("acme", name, [chunk("c1", "d1", "x", unit(1))])
    assert store.delete_document("acme", name, "d1") == 0
    assert store.drop_collection("acme", name) is False


def test_keyword_search_ranks_by_matching_words(store, name):
    store.ensure_collection("acme", name, DIM)
    texts = {"both": "Refunds are issued for damaged goods within 30 days.",
             "refund": "Our refund policy is simple.",
             "shipping": "Shipping takes three to five business days.",
             "damage": "Damage in transit is rare."}
    store.upsert("acme", name, [chunk(cid, "d1", t, unit(i)) for i, (cid, t) in enumerate(texts.items())])
    hits = store.search_keyword("acme", name, "What is the refund for damaged items?", k=10)
    ids = [h["chunk_id"] for h in hits]
    assert ids[0] == "both"  # holds both words (stemmed: refunds ~ refund, damaged ~ damage)
    assert set(ids) == {"both", "refund", "damage"}
    assert hits[0]["score"] > hits[1]["score"] > 0
    assert [h["chunk_id"] for h in store.search_keyword("acme", name, "shipping", k=10)] == ["shipping"]
    assert len(store.search_keyword("acme", name, "refund damage", k=1)) == 1
    assert store.search_keyword("acme", name, "unicorns", k=10) == []
    assert store.search_keyword("acme", name, "the and of", k=10) == []  # stop words only
    assert store.search_keyword("acme", name, "", k=10) == []
    assert store.search_keyword("acme", name, "refund & | ! ( :* '", k=10)  # operators are just text


def test_filters_are_equality_on_metadata(store, name):
    store.ensure_collection("acme", name, DIM)
    q = unit(3)
    store.upsert("acme", name, [
        chunk("en-1", "d1", "refund policy", at_cosine(q, 0.9, 1), lang="en", year=2024, public=True),
        chunk("de-1", "d2", "refund policy auf Deutsch", at_cosine(q, 0.95, 2), lang="de", year=2024, public=True),
        chunk("en-2", "d3", "refund policy, old", at_cosine(q, 0.8, 3), lang="en", year=2023, public=False),
        chunk("none", "d4", "refund policy, no metadata", at_cosine(q, 0.99, 4))])
    ids = lambda hits: [h["chunk_id"] for h in hits]
    assert ids(store.search_vector("acme", name, q.tolist(), k=10, filters={"lang": "en"})) == ["en-1", "en-2"]
    assert ids(store.search_vector("acme", name, q.tolist(), k=10, filters={"lang": "en", "year": 2023})) == ["en-2"]
    assert ids(store.search_vector("acme", name, q.tolist(), k=10, filters={"public": True})) == ["de-1", "en-1"]
    assert store.search_vector("acme", name, q.tolist(), k=10, filters={"lang": "fr"}) == []
    assert store.search_vector("acme", name, q.tolist(), k=10, filters={"year": "2024"}) == []  # types matter
    assert set(ids(store.search_keyword("acme", name, "refund", k=10, filters={"lang": "en"}))) == {"en-1", "en-2"}
    assert ids(store.search_keyword("acme", name, "refund", k=10, filters={"year": 2024, "lang": "de"})) == ["de-1"]
    assert len(store.search_vector("acme", name, q.tolist(), k=10, filters={})) == 4  # empty = no filter
    with pytest.raises(ValueError):
        store.search_vector("acme", name, q.tolist(), filters={"lang": ["en", "de"]})


def test_a_selective_filter_still_fills_k(store, name):
    """HNSW hands over a bounded candidate list; the backend must keep looking when a filter discards most."""
    store.ensure_collection("acme", name, DIM)
    q = unit(4)
    chunks = [chunk(f"common-{i}", f"d{i}", "common", at_cosine(q, 0.9 - i * 0.001, i)) for i in range(300)]
    chunks += [chunk(f"rare-{i}", f"r{i}", "rare", at_cosine(q, 0.1 + i * 0.01, 1000 + i), tag="rare")
               for i in range(3)]
    store.upsert("acme", name, chunks)
    hits = store.search_vector("acme", name, q.tolist(), k=3, filters={"tag": "rare"})
    assert [h["chunk_id"] for h in hits] == ["rare-2", "rare-1", "rare-0"]


def test_k_beyond_the_default_candidate_list(store, name):
    store.ensure_collection("acme", name, DIM)
    q = unit(5)
    store.upsert("acme", name, [chunk(f"c{i:03d}", "d", "x", at_cosine(q, 0.99 - i * 0.005, i)) for i in range(150)])
    hits = store.search_vector("acme", name, q.tolist(), k=120)
    assert len(hits) == 120
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert [h["chunk_id"] for h in hits[:5]] == ["c000", "c001", "c002", "c003", "c004"]


def test_get_chunks_by_id(store, name):
    """What the knowledge graph's expansion uses: chunks by id, in the order asked, filtered, unknown ids left out."""
    store.ensure_collection("acme", name, DIM)
    store.upsert("acme", name, [chunk(f"c{i}", "d0", f"text {i}", unit(40 + i), lang="en" if i % 2 else "de")
                                for i in range(5)])
    hits = store.get_chunks("acme", name, ["c3", "nope", "c0", "c3"])
    assert [(h["chunk_id"], h["document_id"], h["text"], h["score"]) for h in hits] == [
        ("c3", "d0", "text 3", 0.0), ("c0", "d0", "text 0", 0.0)]
    assert [h["chunk_id"] for h in store.get_chunks("acme", name, ["c0", "c1", "c3"], filters={"lang": "en"})] == \
        ["c1", "c3"]
    assert store.get_chunks("acme", name, []) == []
    with pytest.raises(CollectionNotFound):
        store.get_chunks("acme", name + "-none", ["c0"])


def test_delete_document(store, name):
    store.ensure_collection("acme", name, DIM)
    q = unit(6)
    store.upsert("acme", name, [chunk(f"a{i}", "doc-a", f"alpha part {i}", at_cosine(q, 0.9, i)) for i in range(3)]
                 + [chunk(f"b{i}", "doc-b", f"beta part {i}", at_cosine(q, 0.5, 10 + i)) for i in range(2)])
    assert store.delete_document("acme", name, "doc-a") == 3
    assert {h["document_id"] for h in store.search_vector("acme", name, q.tolist(), k=10)} == {"doc-b"}
    assert store.search_keyword("acme", name, "alpha", k=10) == []
    assert len(store.search_keyword("acme", name, "beta", k=10)) == 2
    assert store.delete_document("acme", name, "doc-a") == 0
    assert store.delete_document("acme", name, "no-such-doc") == 0


def test_drop_collection(store, name):
    store.ensure_collection("acme", name, DIM)
    store.upsert("acme", name, [chunk("c1", "d1", "gone soon", unit(7))])
    assert store.drop_collection("acme", name) is True
    with pytest.raises(CollectionNotFound):
        store.search_vector("acme", name, unit(7).tolist())
    assert store.drop_collection("acme", name) is False
    store.ensure_collection("acme", name, 16)  # the name is free again, with any width, and empty
    assert store.search_keyword("acme", name, "gone soon", k=10) == []
    assert store.search_vector("acme", name, unit(7, 16).tolist(), k=10) == []


def test_tenants_never_see_each_other(store, name):
    """Same collection name, chunk ids and document ids in two tenants: every call stays inside its tenant."""
    q = unit(8)
    for tenant in ("acme", "globex"):
        store.ensure_collection(tenant, name, DIM)
        store.upsert(tenant, name, [chunk(f"c{i}", f"d{i % 2}", f"{tenant} secret number {i}", at_cosine(q, 0.9, i),
                                          owner=tenant) for i in range(4)])
    store.ensure_collection("acme", name + "-private", DIM)
    store.upsert("acme", name + "-private", [chunk("p1", "d0", "acme private plans", q, owner="acme")])

    def owners(hits):
        return {h["metadata"]["owner"] for h in hits} | {h["text"].split()[0] for h in hits}

    # search: only one's own chunks, whatever the query or filter
    assert owners(store.search_vector("globex", name, q.tolist(), k=100)) == {"globex"}
    assert owners(store.search_keyword("globex", name, "acme secret", k=100)) == {"globex"}
    assert store.search_vector("globex", name, q.tolist(), k=100, filters={"owner": "acme"}) == []
    with pytest.raises(CollectionNotFound):
        store.search_vector("globex", name + "-private", q.tolist())
    with pytest.raises(CollectionNotFound):
        store.search_keyword("globex", name + "-private", "private plans")
    with pytest.raises(CollectionNotFound):
        store.get_chunks("globex", name + "-private", ["p1"])
    assert owners(store.get_chunks("globex", name, ["c0", "c1", "c2", "c3"])) == {"globex"}
    # write and delete: never into or out of the other tenant
    with pytest.raises(CollectionNotFound):
        store.upsert("globex", name + "-private", [chunk("p1", "d0", "overwritten", q)])
    assert store.delete_document("globex", name + "-private", "d0") == 0
    assert store.drop_collection("globex", name + "-private") is False
    assert store.delete_document("globex", name, "d0") == 2  # globex's own two chunks of d0 ...
    store.upsert("globex", name, [chunk("c1", "d9", "globex replaced", q, owner="globex")])  # ... and its own c1
    assert store.drop_collection("globex", name) is True

    acme = store.search_vector("acme", name, q.tolist(), k=100)
    assert sorted(h["chunk_id"] for h in acme) == ["c0", "c1", "c2", "c3"]  # untouched
    assert owners(acme) == {"acme"}
    assert [h["text"] for h in store.search_keyword("acme", name + "-private", "plans", k=10)] == ["acme private plans"]


def test_bad_input_is_refused(store, name):
    store.ensure_collection("acme", name, DIM)
    with pytest.raises(ValueError):
        store.search_vector("acme", name, unit(1).tolist(), k=0)
    with pytest.raises(ValueError):
        store.upsert("acme", name, [chunk("c1", "d1", "x", [float("nan")] * DIM)])
    with pytest.raises(ValueError):
        store.upsert("acme", name, [chunk("c1", "d1", "x", [0.0] * DIM)])  # no direction, no cosine
    with pytest.raises(ValueError):
        store.upsert("acme", name, [{"id": "c1", "text": "no document", "vector": unit(1).tolist()}])
    with pytest.raises(ValueError):
        store.ensure_collection("", name, DIM)
    with pytest.raises(ValueError):
        store.ensure_collection("acme", name + "-zero", 0)
    assert store.upsert("acme", name, []) == 0
    store.upsert("acme", name, [chunk("nul", "d1", "pdf\x00text", unit(1))])  # NUL characters are dropped
    assert store.search_keyword("acme", name, "pdftext", k=1)[0]["text"] == "pdftext"


# pgvector's own guarantees --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pg(migrated):
    from scaigrid.adapters.vector.pgvector import PgVectorStore

    return PgVectorStore(engine_for(migrated))


def test_pgvector_search_uses_the_collections_hnsw_index(pg, migrated, name):
    pg.ensure_collection("acme", name, DIM)
    q = unit(9)
    pg.upsert("acme", name, [chunk(f"c{i}", "d", "x", unit(100 + i)) for i in range(200)])
    engine = engine_for(migrated)
    seen = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if "ORDER BY" in statement:
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        pg.search_vector("acme", name, q.tolist(), k=5)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    statement, parameters = seen[-1]
    with engine.connect() as conn:
        cid = conn.scalar(text("SELECT id FROM vector_collections WHERE tenant_id = 'acme' AND name = :n"), {"n": name})
        cur = conn.connection.driver_connection.cursor()
        # A partition this small is read whole and sorted (exact and cheaper: the planner's right call; from a few
        # thousand rows on it takes the index by itself). Sorting off shows the index *can* serve the query: its
        # expression matches the ORDER BY and the partition is pruned to.
        cur.execute("SET LOCAL enable_sort = off")
        cur.execute("EXPLAIN " + statement, parameters)
        plan = "\n".join(row[0] for row in cur.fetchall())
    assert f"vector_chunks_{cid}_hnsw" in plan, plan  # an approximate index scan, not a sort of every row


def test_pgvector_collections_are_partitions(pg, migrated, name):
    engine = engine_for(migrated)
    pg.ensure_collection("acme", name, DIM)
    with engine.connect() as conn:
        cid = conn.scalar(text("SELECT id FROM vector_collections WHERE tenant_id = 'acme' AND name = :n"), {"n": name})
        exists = lambda: conn.scalar(text("SELECT to_regclass(:p) IS NOT NULL"), {"p": f"vector_chunks_{cid}"})
        assert exists()
        conn.commit()
        pg.drop_collection("acme", name)
        assert not exists()


def test_pgvector_concurrent_ensure_collection(pg, name):
    with cf.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: pg.ensure_collection("acme", name, DIM), range(8)))
    pg.upsert("acme", name, [chunk("c1", "d1", "x", unit(1))])
    assert len(pg.search_vector("acme", name, unit(1).tolist(), k=10)) == 1



def test_open_store_picks_the_backend(migrated, monkeypatch):
    from scaigrid.adapters.vector.pgvector import PgVectorStore
    from scaigrid.adapters.vector.provider import open_store
    from scaigrid.runtime.preflight import StoreDown

    store = open_store("pgvector", {"DATABASE_URL": migrated, "SCAIGRID_FUNCTION_CONFIG": {"hnsw_ef_search": 100}})
    assert isinstance(store, PgVectorStore) and store.ef_search == 100
    monkeypatch.delenv("SCAIGRID_WEAVIATE_URL", raising=False)
    with pytest.raises(ValueError, match="SCAIGRID_WEAVIATE_URL"):
        open_store("weaviate", {})
    if importlib.util.find_spec("weaviate"):  # the `weaviate` extra: nothing listens on ports 9 and 10
        with pytest.raises(StoreDown, match=r"^cannot reach the vector store \(Weaviate\) at http://127.0.0.1:9"):
            open_store("weaviate", {"SCAIGRID_FUNCTION_CONFIG": {"weaviate_url": "http://127.0.0.1:9?grpc_port=10"}})
    with pytest.raises(ValueError):
        open_store("milvus", {})


# reciprocal rank fusion (pure) ----------------------------------------------------------------------------------

def hits(*ids):
    return [{"chunk_id": i, "document_id": "d", "text": i, "score": 99.0, "metadata": {}} for i in ids]


def test_rrf_sums_reciprocal_ranks():
    fused = reciprocal_rank_fusion([hits("x", "y", "z"), hits("y", "z", "w")])
    assert [h["chunk_id"] for h in fused] == ["y", "z", "x", "w"]
    expected = {"y": 1 / 62 + 1 / 61, "z": 1 / 63 + 1 / 62, "x": 1 / 61, "w": 1 / 63}
    for h in fused:
        assert h["score"] == pytest.approx(expected[h["chunk_id"]])


def test_rrf_is_pure_and_deterministic():
    a, b = hits("a", "b"), hits("b", "a")
    fused = reciprocal_rank_fusion([a, b])
    assert [h["chunk_id"] for h in fused] == ["a", "b"]  # a tie: equal best ranks, then first seen
    assert a[0]["score"] == 99.0 and fused[0] is not a[0]  # inputs untouched
    assert reciprocal_rank_fusion([]) == []
    assert reciprocal_rank_fusion([[], hits("a")])[0]["score"] == pytest.approx(1 / 61)


def test_rrf_options():
    lists = [hits("a", "b", "c"), hits("c", "b", "a")]
    assert [h["chunk_id"] for h in reciprocal_rank_fusion(lists, weights=[1, 2])] == ["c", "b", "a"]
    assert len(reciprocal_rank_fusion(lists, limit=2)) == 2
    assert reciprocal_rank_fusion([hits("a", "a", "b")])[0]["score"] == pytest.approx(1 / 61)  # repeats count once
    assert reciprocal_rank_fusion([hits("a")], k=0)[0]["score"] == 1.0
    with pytest.raises(ValueError):
        reciprocal_rank_fusion(lists, weights=[1])

