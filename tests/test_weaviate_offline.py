"""The Weaviate backend's translation, checked without a Weaviate server (none runs here): names, ids, terms,
metadata properties and filters, with weaviate-client's own objects where it has them (filters as the gRPC messages
the client sends, collection configs as the REST schema it posts). The backend against a real server is
tests/test_vector_contract.py's Weaviate slot (SCAIGRID_TEST_WEAVIATE_URL)."""
import re
import time

import numpy as np
import pytest

pytest.importorskip("snowballstemmer", reason="the `weaviate` extra is not installed")

from scaigrid.adapters.vector.weaviate import UNSERIALISABLE, WeaviateStore, _portable_chunk, parse_url  # noqa: E402
from scaigrid.adapters.vector.weaviate_mapping import (chunk_properties, chunk_uuid, class_name,  # noqa: E402
                                                       metadata_property, registry_uuid, tenant_name, terms)
from scaigrid.runtime.preflight import StoreDown  # noqa: E402

CLASS = re.compile(r"^[A-Z][_0-9A-Za-z]{0,254}$")  # Weaviate's collection names
TENANT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # Weaviate's tenant names
PROPERTY = re.compile(r"^[_A-Za-z][_0-9A-Za-z]{0,230}$")  # Weaviate's property names
NAMES = ["docs", "Docs", "DOCS", "do-cs", "do_cs", "do cs", "docs!", "x" * 100, "Ünïcødé 文档", "🙂", "-", "_"]


def test_collection_and_tenant_names_are_valid_and_distinct():
    classes = [class_name("Scaigrid", n) for n in NAMES]
    tenants = [tenant_name(n) for n in NAMES]
    assert all(CLASS.match(c) for c in classes), classes
    assert all(TENANT.match(t) for t in tenants), tenants
    # distinct even where Weaviate compares case-insensitively: everything after the prefix is lowercase
    assert len({c.lower() for c in classes}) == len(NAMES)
    assert len({t.lower() for t in tenants}) == len(NAMES)
    assert class_name("Scaigrid", "Support FAQ") == class_name("Scaigrid", "Support FAQ")  # stable across runs
    assert class_name("Scaigrid", "Support FAQ").startswith("ScaigridC_support_faq_")
    assert not class_name("Scaigrid", "registry").startswith("ScaigridRegistry")


def test_object_ids_are_deterministic_and_never_shared():
    assert chunk_uuid("acme", "docs", "c1") == chunk_uuid("acme", "docs", "c1")
    ids = {chunk_uuid("acme", "docs", "c1"), chunk_uuid("globex", "docs", "c1"), chunk_uuid("acme", "faq", "c1"),
           chunk_uuid("acme", "docs", "c2"), chunk_uuid("a\x00b", "c", "d"), chunk_uuid("a", "b\x00c", "d"),
           registry_uuid("acme", "docs")}
    assert len(ids) == 7
    assert chunk_uuid("acme", "docs", "c1").version == 5


def test_terms_match_postgres_english_configuration():
    both = set(terms("Refunds are issued for damaged goods within 30 days."))
    question = set(terms("What is the refund for damaged items?"))
    assert question == {"refund", "damag", "item"}  # stop words gone, stems as PostgreSQL's english has them
    assert both & question == {"refund", "damag"}
    assert terms("Damage in transit is rare.")[0] == "damag"
    assert terms("the and of") == [] and terms("") == []
    assert terms("refund & | ! ( :* '") == ["refund"]  # operators are plain text
    assert terms("pdftext") == ["pdftext"]


def test_metadata_properties_keep_types_apart():
    name = lambda k, v: metadata_property(k, v)[0]  # noqa: E731
    assert name("year", 2024) == name("year", 2024.0)  # one number kind, as jsonb compares them
    assert len({name("year", 2024), name("year", "2024"), name("year", True), name("year", None)}) == 4
    assert metadata_property("public", True)[1:] == ("b", True)
    assert metadata_property("owner", None)[1:] == ("z", True)  # a null marker, filterable as equality
    assert metadata_property("tags", ["a"]) is None and metadata_property("x", {"a": 1}) is None
    assert metadata_property("big", 10 ** 400) is None and metadata_property("nan", float("nan")) is None
    keys = ["lang", "Lang", "LANG", "a b", "ключ", "k" * 500, "_", "m_6c616e67_s"]
    names = [name(k, "v") for k in keys]
    assert all(PROPERTY.match(n) for n in names), names
    assert len({n.lower() for n in names}) == len(keys)


def test_chunk_properties():
    props, needed = chunk_properties({"id": "c1", "document_id": "d1", "text": "Refund policy",
                                      "metadata": {"lang": "en", "year": 2024, "tags": ["x"], "draft": None}})
    assert props["chunk_id"] == "c1" and props["document_id"] == "d1" and props["text"] == "Refund policy"
    assert props["terms"] == "refund polici"
    assert props["metadata_json"] == '{"lang": "en", "year": 2024, "tags": ["x"], "draft": null}'
    assert needed == {metadata_property("lang", "en")[0]: "s", metadata_property("year", 1)[0]: "n",
                      metadata_property("draft", None)[0]: "z"}
    assert props[metadata_property("year", 1)[0]] == 2024.0


def test_filters_become_the_grpc_the_client_sends():
    weaviate = pytest.importorskip("weaviate")
    from weaviate.collections.filters import _FilterToGRPC

    from scaigrid.adapters.vector.weaviate_client import where

    lang, year, public, draft = (metadata_property(k, v)[0]
                                 for k, v in [("lang", "en"), ("year", 1), ("public", True), ("draft", None)])
    grpc = _FilterToGRPC.convert(where({"lang": "en", "year": 2023, "public": True, "draft": None},
                                       {lang, year, public, draft}))
    assert grpc.operator == weaviate.proto.v1.base_pb2.Filters.OPERATOR_AND
    parts = {f.target.property: f for f in grpc.filters}
    assert parts[lang].value_text == "en" and parts[year].value_number == 2023.0
    assert parts[public].value_boolean is True and parts[draft].value_boolean is True
    assert {f.operator for f in grpc.filters} == {weaviate.proto.v1.base_pb2.Filters.OPERATOR_EQUAL}
    assert where({}, {lang}) is None  # no filter
    assert where({"lang": "fr"}, {lang}) is not False  # a value no chunk has: Weaviate answers nothing
    assert where({"year": "2024"}, {lang, year}) is False  # no chunk ever had a text year: no property to ask
    assert where({"unknown": 1}, {lang}) is False


def test_collection_configs_are_what_weaviate_gets():
    pytest.importorskip("weaviate")
    from weaviate.collections.classes.config import _CollectionConfigCreate

    from scaigrid.adapters.vector.weaviate_client import chunk_collection_config, property_for, registry_config

    schema = _CollectionConfigCreate(**chunk_collection_config("ScaigridC_docs_0123")).\
        _to_dict(emit_default_vector_index_type=True)
    assert schema["class"] == "ScaigridC_docs_0123"
    assert schema["multiTenancyConfig"] == {"enabled": True, "autoTenantCreation": False}
    vector = schema["vectorConfig"]["embedding"]
    assert vector["vectorizer"] == {"none": {}} and vector["vectorIndexType"] == "hnsw"
    assert vector["vectorIndexConfig"]["distance"] == "cosine"
    assert schema["invertedIndexConfig"]["stopwords"]["preset"] == "none"  # `terms` carries none already
    props = {p["name"]: p for p in schema["properties"]}
    assert props["terms"]["tokenization"] == "whitespace" and props["terms"]["indexSearchable"] is True
    assert props["chunk_id"]["tokenization"] == props["document_id"]["tokenization"] == "field"
    assert props["metadata_json"]["indexFilterable"] is False
    registry = _CollectionConfigCreate(**registry_config("ScaigridRegistry"))._to_dict()
    assert "multiTenancyConfig" not in registry
    assert {p["name"]: p["dataType"] for p in registry["properties"]}["dimensions"] == ["int"]
    text = property_for("m_6c616e67_s", "s")._to_dict()
    assert text["dataType"] == ["text"] and text["tokenization"] == "field" and text["indexFilterable"] is True
    assert property_for("m_79_n", "n")._to_dict()["dataType"] == ["number"]
    assert property_for("m_70_b", "b")._to_dict()["dataType"] == ["boolean"]


def test_parse_url():
    assert parse_url("http://weaviate:8080") == {"http_host": "weaviate", "http_port": 8080, "http_secure": False,
                                                 "grpc_host": "weaviate", "grpc_port": 50051, "grpc_secure": False}
    assert parse_url("https://w.example.com?grpc_host=grpc.example.com") == {
        "http_host": "w.example.com", "http_port": 443, "http_secure": True, "grpc_host": "grpc.example.com",
        "grpc_port": 50051, "grpc_secure": True}
    assert parse_url("http://h:9000?grpc_port=9001&grpc_secure=true")["grpc_secure"] is True
    for bad in ["bolt://h:7687", "http://", "http://key:secret@h:8080", "http://h:8080/v1", "http://h?grpc=1",
                "http://h:50051", "http://h?grpc_secure=maybe"]:
        with pytest.raises(ValueError):
            parse_url(bad)


def test_chunks_are_made_portable_without_judging_them():
    portable = _portable_chunk({"id": "c1", "document_id": "d1", "text": "t", "vector": np.ones(3, np.float32),
                                "metadata": {"when": (1, 2), 3: "x"}, "extra": object()})
    assert portable == {"id": "c1", "document_id": "d1", "text": "t", "vector": [1.0, 1.0, 1.0],
                        "metadata": {"when": [1, 2], "3": "x"}}  # JSON's view, as pgvector stores it
    assert _portable_chunk({"metadata": {"at": object()}})["metadata"] == {UNSERIALISABLE: True}
    assert _portable_chunk({"vector": ["a"], "text": b"bytes"}) == {"vector": None, "text": None, "metadata": {}}
    assert _portable_chunk({"metadata": "text"})["metadata"] == "not an object"


def test_a_weaviate_that_is_down_is_one_line_naming_it(monkeypatch):
    pytest.importorskip("weaviate")
    monkeypatch.delenv("SCAIGRID_WEAVIATE_URL", raising=False)
    t0 = time.monotonic()
    with pytest.raises(StoreDown) as down:
        WeaviateStore("http://127.0.0.1:9?grpc_port=10", api_key="sekrit-key")  # nothing listens on 9 or 10
    message = str(down.value)
    assert message.startswith("cannot reach the vector store (Weaviate) at http://127.0.0.1:9?grpc_port=10 (")
    assert "SCAIGRID_WEAVIATE_URL" in message and "\n" not in message and "sekrit" not in message
    assert time.monotonic() - t0 < 20
    with pytest.raises(ValueError, match="needs a URL"):
        WeaviateStore()
