"""The Weaviate side of WeaviateStore: runs in the off-hub child process (runtime/offhub.py), never under eventlet,
and is the only module that imports `weaviate` (weaviate-client v4; its gRPC calls would stall the hub). How tenants,
collections, chunks and metadata map onto Weaviate: weaviate_mapping.py and docs/vector-store.md (Weaviate).
"""
from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import weaviate
from cachetools import LRUCache
from weaviate.classes.config import (Configure, DataType, Property, StopwordsPreset, Tokenization,
                                     VectorDistances)
from weaviate.classes.data import DataObject
from weaviate.classes.init import AdditionalConfig, Auth, Timeout
from weaviate.classes.query import Filter, MetadataQuery
from weaviate.exceptions import UnexpectedStatusCodeError, WeaviateBaseError

from .base import CollectionNotFound, DimensionMismatch, Hit, check_chunk, check_vector
from .weaviate import BATCH, UNSERIALISABLE  # UNSERIALISABLE: WeaviateStore's mark on metadata that is not JSON
from .weaviate_mapping import (chunk_properties, chunk_uuid, class_name, metadata_property, registry_uuid,
                               tenant_name, terms)

RETURNED = ["chunk_id", "document_id", "text", "metadata_json"]
VECTOR = "embedding"  # the one named vector, named on every write and search rather than left to server defaults
SCHEMA_CACHE_SIZE = 1_000  # Weaviate collections (one per collection name) whose property names the child keeps
MISSING = re.compile(r"tenant not found|could not find class|class .{0,200} not found|not present in schema", re.I)


# schema and filters ---------------------------------------------------------------------------------------------

def property_for(name: str, kind: str) -> Property:
    if kind == "s":
        return Property(name=name, data_type=DataType.TEXT, tokenization=Tokenization.FIELD, index_filterable=True,
                        index_searchable=False)
    return Property(name=name, data_type=DataType.NUMBER if kind == "n" else DataType.BOOL, index_filterable=True)


def where(filters: Mapping[str, Any], known: set[str]):
    """A Weaviate filter for equality on every key, None for no filter, False when nothing can match (a key or a
    value type no chunk of this collection ever had, so no property exists to ask)."""
    parts = []
    for key, value in filters.items():
        name, _, stored = metadata_property(key, value) or (None, None, None)
        if name is None or name not in known:
            return False
        parts.append(Filter.by_property(name).equal(stored))
    return Filter.all_of(parts) if parts else None


def chunk_collection_config(name: str) -> dict[str, Any]:
    """collections.create's arguments for one ScaiGrid collection."""
    return dict(
        name=name,
        description="ScaiGrid vector collection (scaigrid.adapters.vector.weaviate)",
        multi_tenancy_config=Configure.multi_tenancy(enabled=True, auto_tenant_creation=False),
        vector_config=Configure.Vectors.self_provided(
            name=VECTOR, vector_index_config=Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE)),
        inverted_index_config=Configure.inverted_index(stopwords_preset=StopwordsPreset.NONE),  # `terms` has none
        properties=[
            Property(name="chunk_id", data_type=DataType.TEXT, tokenization=Tokenization.FIELD,
                     index_filterable=True, index_searchable=False),
            Property(name="document_id", data_type=DataType.TEXT, tokenization=Tokenization.FIELD,
                     index_filterable=True, index_searchable=False),
            Property(name="text", data_type=DataType.TEXT, index_filterable=False, index_searchable=False),
            Property(name="terms", data_type=DataType.TEXT, tokenization=Tokenization.WHITESPACE,
                     index_filterable=False, index_searchable=True),
            Property(name="metadata_json", data_type=DataType.TEXT, index_filterable=False, index_searchable=False),
        ])


def registry_config(name: str) -> dict[str, Any]:
    return dict(
        name=name,
        description="ScaiGrid: which Weaviate collection and dimensions each tenant's collection has",
        vector_config=Configure.Vectors.self_provided(),  # objects carry no vector
        properties=[Property(name=n, data_type=DataType.TEXT, tokenization=Tokenization.FIELD, index_searchable=False)
                    for n in ("tenant", "collection", "class_name")]
                   + [Property(name="dimensions", data_type=DataType.INT)])


def _hit(obj, score: float) -> Hit:
    p = obj.properties
    return Hit(chunk_id=p["chunk_id"], document_id=p["document_id"], text=p.get("text") or "", score=float(score),
               metadata=json.loads(p.get("metadata_json") or "{}"))


# the backend ------------------------------------------------------------------------------------------------------

class WeaviateBackend:
    """The VectorStore calls, already validated for names, k and filters by WeaviateStore (the parent side)."""

    def __init__(self, http_host: str, http_port: int, http_secure: bool, grpc_host: str, grpc_port: int,
                 grpc_secure: bool, api_key: str | None = None, class_prefix: str = "Scaigrid",
                 timeout: float = 30.0, schema_cache_size: int = SCHEMA_CACHE_SIZE):
        self.client = weaviate.connect_to_custom(
            http_host=http_host, http_port=http_port, http_secure=http_secure, grpc_host=grpc_host,
            grpc_port=grpc_port, grpc_secure=grpc_secure, auth_credentials=Auth.api_key(api_key) if api_key else None,
            additional_config=AdditionalConfig(timeout=Timeout(init=10, query=timeout, insert=max(timeout, 90))))
        self.prefix = class_prefix
        # per Weaviate collection, filled on first use; bounded, as collection names grow with tenants. A dropped
        # entry is read again from the schema on the next write or filtered search of that collection.
        self._properties: LRUCache[str, set[str]] = LRUCache(max(1, schema_cache_size))
        self._lock = threading.Lock()
        self.registry = self.client.collections.use(f"{class_prefix}Registry")
        self._create_collection(registry_config(self.registry.name))

    def close(self) -> None:
        self.client.close()

    def server_version(self) -> str:
        return str(self.client.get_meta().get("version", "?"))

    # collections ------------------------------------------------------------------------------------------------
    def _create_collection(self, config: dict[str, Any]) -> None:
        if self.client.collections.exists(config["name"]):
            return
        try:
            self.client.collections.create(**config)
        except UnexpectedStatusCodeError:
            if not self.client.collections.exists(config["name"]):  # not a concurrent creator's win: a real error
                raise

    def _ensure_tenant(self, cls: str, tenant: str) -> None:
        tenants = self.client.collections.use(cls).tenants
        name = tenant_name(tenant)
        if tenants.exists(name):
            return
        try:
            tenants.create(name)
        except WeaviateBaseError:
            if not tenants.exists(name):
                raise

    def _lookup(self, tenant: str, collection: str) -> tuple[str, int] | None:
        obj = self.registry.query.fetch_object_by_id(registry_uuid(tenant, collection))
        if obj is None or obj.properties.get("tenant") != tenant or obj.properties.get("collection") != collection:
            return None
        return obj.properties["class_name"], int(obj.properties["dimensions"])

    def _require(self, tenant: str, collection: str) -> tuple[str, int]:
        found = self._lookup(tenant, collection)
        if found is None:
            raise CollectionNotFound(collection)
        return found

    def ensure_collection(self, tenant: str, collection: str, dimensions: int) -> None:
        for _ in range(3):  # a concurrent drop of the collection's last tenant may delete it under us: redo
            found = self._lookup(tenant, collection)
            if found is not None and found[1] != dimensions:
                raise DimensionMismatch(f"collection {collection!r} has {found[1]} dimensions, not {dimensions}")
            cls = found[0] if found else class_name(self.prefix, collection)
            self._create_collection(chunk_collection_config(cls))
            self._ensure_tenant(cls, tenant)
            if found is None:
                self._register(tenant, collection, cls, dimensions)
            if self.client.collections.use(cls).tenants.exists(tenant_name(tenant)):
                return
        raise RuntimeError(f"collection {collection!r} was dropped while it was being created; try again")

    def _register(self, tenant: str, collection: str, cls: str, dimensions: int) -> None:
        try:
            self.registry.data.insert({"tenant": tenant, "collection": collection, "class_name": cls,
                                       "dimensions": dimensions}, uuid=registry_uuid(tenant, collection))
        except UnexpectedStatusCodeError:  # registered meanwhile by a concurrent ensure_collection
            found = self._lookup(tenant, collection)
            if found is None:
                raise
            if found[1] != dimensions:
                raise DimensionMismatch(f"collection {collection!r} has {found[1]} dimensions, not {dimensions}")

    def drop_collection(self, tenant: str, collection: str) -> bool:
        found = self._lookup(tenant, collection)
        if found is None:
            return False
        coll = self.client.collections.use(found[0])
        try:
            coll.tenants.remove([tenant_name(tenant)])  # this tenant's shard only: other tenants are untouched
        except WeaviateBaseError:
            if self.client.collections.exists(found[0]) and coll.tenants.exists(tenant_name(tenant)):
                raise
        self.registry.data.delete_by_id(registry_uuid(tenant, collection))
        try:
            if not coll.tenants.get():  # the last tenant left: the Weaviate collection goes too
                self.client.collections.delete(found[0])
                with self._lock:
                    self._properties.pop(found[0], None)
        except WeaviateBaseError:
            pass  # gone already, or a tenant arrived: either way nothing of ours is left in it
        return True

    # chunks -----------------------------------------------------------------------------------------------------
    @contextmanager
    def _tenant_scope(self, collection: str) -> Iterator[None]:
        """Weaviate's "no such tenant/collection" (a concurrent drop) means CollectionNotFound, as in pgvector."""
        try:
            yield
        except WeaviateBaseError as exc:
            if MISSING.search(str(exc)):
                raise CollectionNotFound(collection) from None
            raise

    def _known(self, cls: str, refresh: bool = False) -> set[str]:
        with self._lock:
            known = self._properties.get(cls)
        if known is None or refresh:
            known = {p.name for p in self.client.collections.use(cls).config.get().properties}
            with self._lock:
                self._properties[cls] = known
        return known

    def _ensure_properties(self, cls: str, needed: dict[str, str]) -> None:
        if all(n in self._known(cls) for n in needed):
            return
        known = self._known(cls, refresh=True)
        config = self.client.collections.use(cls).config
        for name, kind in needed.items():
            if name in known:
                continue
            try:
                config.add_property(property_for(name, kind))
            except WeaviateBaseError:
                if name not in self._known(cls, refresh=True):  # not a concurrent writer's addition
                    raise
            known.add(name)

    def upsert(self, tenant: str, collection: str, chunks: list[dict]) -> int:
        cls, dimensions = self._require(tenant, collection)
        rows: dict[str, dict] = {}  # by id, last wins, as in pgvector
        for chunk in chunks:
            c = check_chunk(chunk, dimensions)
            if UNSERIALISABLE in c["metadata"]:
                raise ValueError(f"chunk {c['id']!r}: metadata must be JSON-serialisable")
            rows[c["id"]] = c
        objects, needed = [], {}
        for c in rows.values():
            props, wanted = chunk_properties(c)
            needed.update(wanted)
            objects.append(DataObject(properties=props, uuid=chunk_uuid(tenant, collection, c["id"]),
                                      vector={VECTOR: c["vector"]}))
        if not objects:
            return 0
        self._ensure_properties(cls, needed)
        data = self.client.collections.use(cls).with_tenant(tenant_name(tenant)).data
        with self._tenant_scope(collection):
            for start in range(0, len(objects), BATCH):
                result = data.insert_many(objects[start:start + BATCH])
                if result.errors:
                    first = next(iter(result.errors.values())).message
                    if MISSING.search(first):
                        raise CollectionNotFound(collection)
                    raise RuntimeError(f"Weaviate refused {len(result.errors)} of {len(objects)} chunks: {first}")
        return len(rows)

    def delete_document(self, tenant: str, collection: str, document_id: str) -> int:
        found = self._lookup(tenant, collection)
        if found is None:
            return 0
        data = self.client.collections.use(found[0]).with_tenant(tenant_name(tenant)).data
        deleted = 0
        try:
            with self._tenant_scope(collection):
                while True:  # one delete_many removes at most QUERY_MAXIMUM_RESULTS (10,000 by default)
                    result = data.delete_many(where=Filter.by_property("document_id").equal(document_id))
                    if result.failed:
                        raise RuntimeError(f"Weaviate failed to delete {result.failed} chunks of {document_id!r}")
                    deleted += result.successful
                    if not result.successful:
                        return deleted
        except CollectionNotFound:
            return deleted

    # search -----------------------------------------------------------------------------------------------------
    def search_vector(self, tenant: str, collection: str, vector: list[float], k: int,
                      filters: dict[str, Any]) -> list[Hit]:
        cls, dimensions = self._require(tenant, collection)
        vector = check_vector(vector, dimensions)
        condition = where(filters, self._known_for(cls, filters))
        if condition is False:
            return []
        with self._tenant_scope(collection):
            result = self.client.collections.use(cls).with_tenant(tenant_name(tenant)).query.near_vector(
                near_vector=vector, target_vector=VECTOR, limit=k, filters=condition,
                return_metadata=MetadataQuery(distance=True), return_properties=RETURNED)
        return [_hit(o, 1.0 - o.metadata.distance) for o in result.objects]  # cosine distance -> similarity

    def search_keyword(self, tenant: str, collection: str, query: str, k: int,
                       filters: dict[str, Any]) -> list[Hit]:
        cls, _ = self._require(tenant, collection)
        words = list(dict.fromkeys(terms(query)))  # each word once, as a tsquery has it
        condition = where(filters, self._known_for(cls, filters))
        if not words or condition is False:
            return []
        with self._tenant_scope(collection):
            result = self.client.collections.use(cls).with_tenant(tenant_name(tenant)).query.bm25(
                query=" ".join(words), query_properties=["terms"], limit=k, filters=condition,
                return_metadata=MetadataQuery(score=True), return_properties=RETURNED)
        hits = [_hit(o, o.metadata.score) for o in result.objects]
        return sorted(hits, key=lambda h: (-h["score"], h["chunk_id"]))  # ties by id, as pgvector orders them

    def get_chunks(self, tenant: str, collection: str, chunk_ids: list[str], filters: dict[str, Any]) -> list[Hit]:
        cls, _ = self._require(tenant, collection)
        wanted = list(dict.fromkeys(chunk_ids))
        condition = where(filters, self._known_for(cls, filters))
        if not wanted or condition is False:
            return []
        query = self.client.collections.use(cls).with_tenant(tenant_name(tenant)).query
        found: dict[str, Hit] = {}
        for start in range(0, len(wanted), 1000):  # under QUERY_MAXIMUM_RESULTS (10,000) per request
            ids = Filter.by_id().contains_any([chunk_uuid(tenant, collection, i) for i in wanted[start:start + 1000]])
            with self._tenant_scope(collection):
                result = query.fetch_objects(filters=ids if condition is None else Filter.all_of([ids, condition]),
                                             limit=1000, return_properties=RETURNED)
            found.update((o.properties["chunk_id"], _hit(o, 0.0)) for o in result.objects)
        return [found[i] for i in wanted if i in found]

    def _known_for(self, cls: str, filters: dict[str, Any]) -> set[str]:
        """The schema's properties; read again when a filter names one we have not seen (another process added
        it)."""
        if not filters:
            return set()
        known = self._known(cls)
        names = {(metadata_property(k, v) or ("",))[0] for k, v in filters.items()}
        return known if names <= known else self._known(cls, refresh=True)
