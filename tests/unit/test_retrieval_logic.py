"""Retrieval's logic: reciprocal rank fusion's edges (ties, repeats, weights, copies), the citations and the
context message a chat gets (functions/rag/context.py), and the Retriever's modes and `sources` over a real
pgvector store (synthetic 3-dimensional vectors: no model)."""
import uuid

import pytest

from scaigrid.adapters.sql.engine import engine_for
from scaigrid.adapters.vector.fusion import reciprocal_rank_fusion
from scaigrid.adapters.vector.pgvector import PgVectorStore
from scaigrid.functions.rag.context import INSTRUCTIONS, citations_of, inject_context, last_user_text
from scaigrid.functions.rag.retrieval import MODES, Retriever


def hits(*ids, **fields) -> list[dict]:
    return [{"chunk_id": i, "score": 0.0, **fields} for i in ids]


def ids(fused) -> list:
    return [h["chunk_id"] for h in fused]


# fusion -------------------------------------------------------------------------------------------------------

def test_equal_scores_go_to_the_better_best_rank_then_the_first_seen():
    # k=0: x, y and b score 1/1, a scores 1/2 + 1/2: all tie; a (seen before b) has the worse best rank
    fused = reciprocal_rank_fusion([hits("x", "a"), hits("y", "a"), hits("b")], k=0)
    assert [h["score"] for h in fused] == [1.0] * 4
    assert ids(fused) == ["x", "y", "b", "a"]


def test_a_hit_keeps_its_first_appearance_and_only_score_changes():
    first = hits("a", source="vector", text="from the vector list")
    second = hits("a", source="keyword", text="other")
    [fused] = reciprocal_rank_fusion([first, second])
    assert (fused["source"], fused["text"]) == ("vector", "from the vector list")
    assert fused["score"] == pytest.approx(2 / 61) and first[0]["score"] == 0.0  # inputs untouched


def test_a_zero_weight_list_adds_hits_but_no_score():
    fused = reciprocal_rank_fusion([hits("a"), hits("b", "a")], weights=[1, 0])
    assert ids(fused) == ["a", "b"] and fused[1]["score"] == 0.0


def test_another_key_and_a_limit_of_zero():
    fused = reciprocal_rank_fusion([[{"id": 1}, {"id": 2}], [{"id": 2}]], key="id")
    assert [h["id"] for h in fused] == [2, 1]
    assert reciprocal_rank_fusion([hits("a")], limit=0) == []


def test_a_negative_k_is_refused():
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([hits("a")], k=-1)


# citations and the context message --------------------------------------------------------------------------

def cited(chunk_id: str, text: str = "text", score: float = 0.5, collection: str = "c1") -> dict:
    return {"chunk_id": chunk_id, "collection_id": collection, "document_id": "d-" + chunk_id,
            "document_name": f"{chunk_id}.md", "text": text, "score": score}


def test_one_collection_is_cut_to_top_k_without_fusion():
    rankings = [[cited("a", score=0.9123456789), cited("b"), cited("c")]]
    out = citations_of(rankings, top_k=2)
    assert [(c["index"], c["chunk_id"]) for c in out] == [(1, "a"), (2, "b")]
    assert out[0]["score"] == 0.912346 and out[0]["document"] == "a.md"  # its own score, rounded


def test_several_collections_are_fused_and_numbered_from_one():
    out = citations_of([[cited("a"), cited("b")], [cited("b", collection="c2"), cited("z", collection="c2")]], 3)
    assert [c["chunk_id"] for c in out] == ["b", "a", "z"] and [c["index"] for c in out] == [1, 2, 3]
    assert out[0]["collection_id"] == "c1"  # the first appearance's
    assert citations_of([], 5) == [] and citations_of([[], []], 5) == []


def test_the_sources_go_after_the_caller_s_own_system_messages():
    messages = [{"role": "system", "content": "be brief"}, {"role": "developer", "content": "json"},
                {"role": "user", "content": "q"}, {"role": "system", "content": "late"}]
    out = inject_context(messages, citations_of([[cited("a", " padded \n")]], 1), 1000)
    assert [m["content"] for m in out[:2]] == ["be brief", "json"] and out[3:] == messages[2:]
    assert out[2] == {"role": "system", "content": INSTRUCTIONS + "\n\n[1] a.md\npadded"}
    assert messages[2] == {"role": "user", "content": "q"} and len(messages) == 4  # not modified


def test_passages_past_the_budget_are_left_out_whole():
    citations = citations_of([[cited("a", "x" * 50), cited("b", "y" * 50), cited("c", "z")]], 3)
    context = inject_context([], citations, max_chars=120)[0]["content"]
    assert "[1] a.md" in context and "[2] b.md" in context and "[3]" not in context  # 2 blocks: 57 chars each
    assert "y" * 50 in context  # never cut inside a passage


@pytest.mark.parametrize("messages, question", [
    ([{"role": "user", "content": "first"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "2nd"}],
     "2nd"),
    ([{"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {}},
                                   {"type": "text", "text": "here"}]}], "look here"),
    ([{"role": "user", "content": None}], ""),
    ([{"role": "system", "content": "no user"}], ""),
])
def test_the_question_is_the_last_user_text(messages, question):
    assert last_user_text(messages) == question


# the Retriever over pgvector ----------------------------------------------------------------------------------

VOCAB = ("apple", "banana", "cherry")


def embed(text: str) -> list[float]:
    """A bag of three words: enough geometry for cosine ranks, no model."""
    words = text.lower().split()
    return [float(words.count(w)) + 0.01 for w in VOCAB]


@pytest.fixture(scope="module")
def library(pg_url):
    store, tenant = PgVectorStore(engine_for(pg_url)), f"t-{uuid.uuid4().hex[:8]}"
    store.ensure_collection(tenant, "fruit", 3)
    texts = {"c1": "apple apple apple", "c2": "banana split", "c3": "cherry apple pie", "c4": "banana cherry",
             "c5": "apple banana cherry"}
    store.upsert(tenant, "fruit", [{"id": i, "document_id": "d1", "text": t, "vector": embed(t),
                                    "metadata": {"n": int(i[1])}} for i, t in texts.items()])
    yield store, tenant
    store.drop_collection(tenant, "fruit")


def test_each_mode_says_which_rankings_found_each_hit(library):
    store, tenant = library
    retriever = Retriever(store, embed)
    vector = retriever.search(tenant, "fruit", "apple", top_k=2, mode="vector")
    assert [h["chunk_id"] for h in vector] == ["c1", "c3"] and all(h["sources"] == ["vector"] for h in vector)
    keyword = retriever.search(tenant, "fruit", "banana", top_k=5, mode="keyword")
    assert {h["chunk_id"] for h in keyword} == {"c2", "c4", "c5"} and keyword[0]["sources"] == ["keyword"]
    hybrid = retriever.search(tenant, "fruit", "banana", top_k=5, mode="hybrid")
    by_id = {h["chunk_id"]: h["sources"] for h in hybrid}
    assert by_id["c2"] == ["vector", "keyword"] and by_id["c1"] == ["vector"]


def test_filters_hold_in_every_ranking(library):
    store, tenant = library
    found = Retriever(store, embed).search(tenant, "fruit", "banana", top_k=5, mode="hybrid", filters={"n": 4})
    assert [h["chunk_id"] for h in found] == ["c4"]


def test_hybrid_graph_without_a_graph_is_hybrid(library):
    store, tenant = library
    retriever = Retriever(store, embed)
    plain = retriever.search(tenant, "fruit", "cherry", top_k=3, mode="hybrid")
    assert retriever.search(tenant, "fruit", "cherry", top_k=3, mode="hybrid_graph") == plain


def test_weights_per_search_override_the_retriever_s(library):
    store, tenant = library
    retriever = Retriever(store, embed, weights={"vector": 1.0, "keyword": 0.0})
    assert retriever.search(tenant, "fruit", "split", top_k=1, mode="hybrid")[0]["chunk_id"] != "c2"
    keyword_only = retriever.search(tenant, "fruit", "split", top_k=1, mode="hybrid",
                                    weights={"vector": 0.0, "keyword": 1.0})
    assert keyword_only[0]["chunk_id"] == "c2"


def test_an_unknown_mode_is_refused(library):
    store, tenant = library
    with pytest.raises(ValueError) as info:
        Retriever(store, embed).search(tenant, "fruit", "apple", mode="semantic")
    assert all(m in str(info.value) for m in MODES)
