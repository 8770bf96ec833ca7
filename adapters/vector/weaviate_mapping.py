"""How WeaviateStore lays ScaiGrid's vector data out in Weaviate; pure functions (no weaviate import), used by
weaviate_client.py in the off-hub child and tested offline.

- a ScaiGrid collection name -> one multi-tenant Weaviate collection `<prefix>C_<slug>_<hash>` (slug: the name
  lowercased, other characters as `_`, 40 at most; hash: 16 hex of its sha256, so distinct names never meet);
- a ScaiGrid tenant -> a Weaviate tenant `<slug>-<hash>` (Weaviate allows [A-Za-z0-9_-], 64 at most), created by
  ensure_collection (auto tenant creation off: a typo never creates a tenant);
- `<prefix>Registry` (no tenants) holds one object per (tenant, collection): its Weaviate collection and its
  dimensions, which Weaviate keeps nowhere we can read back; it is also what says a collection exists;
- a chunk -> an object with uuid5 of (tenant, collection, chunk id), so an upsert replaces it; vector
  bring-your-own, HNSW, cosine; text as is, plus `terms` for BM25: its words lowercased, stop words dropped,
  Snowball-stemmed (the stop list and stemmer of PostgreSQL's `english` configuration, which pgvector's uses);
- metadata -> `metadata_json` (returned as is) plus one filterable property per top-level scalar key and value
  type, `m_<hex of the key>_<s|n|b|z>` (text, number, bool, null marker), added to the schema on first use.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import uuid
from collections.abc import Mapping
from typing import Any

import snowballstemmer

NAMESPACE = uuid.UUID("3f0c1d52-6a57-4c8e-9a43-6f1f2b7de0a1")  # ScaiGrid's own: uuid5 ids never meet anyone else's
# PostgreSQL's english.stop (Snowball's English list), so keyword search drops what pgvector's drops
STOP_WORDS = frozenset("""i me my myself we our ours ourselves you your yours yourself yourselves he him his himself
she her hers herself it its itself they them their theirs themselves what which who whom this that these those am is
are was were be been being have has had having do does did doing a an the and but if or because as until while of at
by for with about against between into through during before after above below to from up down in out on off over
under again further then once here there when where why how all any both each few more most other some such no nor
not only own same so than too very s t can will just don should now""".split())

_stemmer = snowballstemmer.stemmer("english")
_stem_lock = threading.Lock()  # a Snowball stemmer keeps state between words: one thread at a time


def _slug(name: str, length: int) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:length]


def _digest(name: str, length: int) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:length]


def class_name(prefix: str, collection: str) -> str:
    return f"{prefix}C_{_slug(collection, 40) or 'x'}_{_digest(collection, 16)}"


def tenant_name(tenant: str) -> str:
    return f"{_slug(tenant, 32) or 't'}-{_digest(tenant, 24)}"


def chunk_uuid(tenant: str, collection: str, chunk_id: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, json.dumps(["chunk", tenant, collection, chunk_id]))  # JSON: no separator clash


def registry_uuid(tenant: str, collection: str) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, json.dumps(["collection", tenant, collection]))


def terms(text: str) -> list[str]:
    words = [w for w in re.findall(r"\w+", text.lower()) if w not in STOP_WORDS]
    with _stem_lock:
        return _stemmer.stemWords(words)


def metadata_property(key: str, value: Any) -> tuple[str, str, Any] | None:
    """(property name, kind, stored value) for a filterable top-level scalar; None for what filters cannot ask for.
    Numbers are one kind (JSON, and pgvector's jsonb, compare 2024 and 2024.0 equal); bool is its own."""
    if value is None:
        kind, stored = "z", True
    elif isinstance(value, bool):
        kind, stored = "b", value
    elif isinstance(value, (int, float)):
        try:
            stored = float(value)
        except OverflowError:
            return None
        if not math.isfinite(stored):
            return None
        kind = "n"
    elif isinstance(value, str):
        kind, stored = "s", value
    else:
        return None
    hexed = key.encode().hex()
    name = f"m_{hexed}_{kind}" if len(hexed) <= 200 else f"m_h{_digest(key, 40)}_{kind}"  # Weaviate: 230 at most
    return name, kind, stored


def chunk_properties(chunk: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The object's properties and the metadata properties it needs ({name: kind})."""
    props = {"chunk_id": chunk["id"], "document_id": chunk["document_id"], "text": chunk["text"],
             "terms": " ".join(terms(chunk["text"])), "metadata_json": json.dumps(chunk["metadata"])}
    needed = {}
    for key, value in chunk["metadata"].items():
        if (flat := metadata_property(str(key), value)) is not None:
            props[flat[0]] = flat[2]
            needed[flat[0]] = flat[1]
    return props, needed
