"""The Weaviate VectorStore. weaviate-client v4's gRPC calls block the whole eventlet hub (docs/architecture.md; tpool did not
help), so the real client lives in an off-hub child process (runtime/offhub.py, adapters/vector/weaviate_client.py)
and this class only validates, then forwards each call over a pipe, which is green I/O under eventlet.

    store = WeaviateStore("http://127.0.0.1:8080?grpc_port=50051")       # api_key: SCAIGRID_WEAVIATE_API_KEY

URL: http(s)://host[:port] (REST; 8080, or 443 for https) with optional query parameters `grpc_port` (50051),
`grpc_host` (the same host) and `grpc_secure` (true for https). The API key never goes in the URL, argv or the
child's environment: it crosses the pipe to the child once. Tenant and collection mapping: weaviate_client.py.
"""
from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from scaigrid.runtime.offhub import OffHubProcess
from scaigrid.runtime.preflight import StoreDown

from .base import Hit, Scalar, VectorStore, check_filters, check_k, check_keyword_search, check_name

TARGET = "scaigrid.adapters.vector.weaviate_client:WeaviateBackend"
MAX_DIMENSIONS = 65535  # Weaviate's limit for one vector
BATCH = 200  # chunks per insert_many in the child: keeps one gRPC message a few MB even at 3,072 dimensions
UNSERIALISABLE = "\x00scaigrid:unserialisable"  # weaviate_client.py raises pgvector's error on seeing it
TRUE, FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def parse_url(url: str) -> dict[str, Any]:
    """connect_to_custom's arguments from a SCAIGRID_WEAVIATE_URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"a Weaviate URL looks like http://host:8080?grpc_port=50051, not {url!r}")
    if parts.username or parts.password:
        raise ValueError("put the Weaviate API key in SCAIGRID_WEAVIATE_API_KEY, not in the URL")
    if parts.path not in ("", "/"):
        raise ValueError(f"a Weaviate URL has no path: {url!r}")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - {"grpc_port", "grpc_host", "grpc_secure"}
    if unknown:
        raise ValueError(f"unknown Weaviate URL parameter(s) {sorted(unknown)}: use grpc_port, grpc_host, grpc_secure")
    secure = parts.scheme == "https"
    grpc_secure = query.get("grpc_secure", str(secure)).lower()
    if grpc_secure not in TRUE | FALSE:
        raise ValueError(f"grpc_secure must be true or false, not {grpc_secure!r}")
    out = {"http_host": parts.hostname, "http_port": parts.port or (443 if secure else 8080), "http_secure": secure,
           "grpc_host": query.get("grpc_host", parts.hostname), "grpc_port": int(query.get("grpc_port", 50051)),
           "grpc_secure": grpc_secure in TRUE}
    if (out["grpc_host"], out["grpc_port"]) == (out["http_host"], out["http_port"]):
        raise ValueError(f"Weaviate's gRPC port must differ from its REST port (add ?grpc_port=50051): {url!r}")
    return out


def _floats(vector: Any) -> list[float] | None:
    """A vector that can cross the pipe (numpy arrays cannot); None for one that is no sequence of numbers, which
    the child then refuses exactly as pgvector does, after the collection check."""
    try:
        return [float(x) for x in vector]
    except (TypeError, ValueError):
        return None


def _portable_chunk(chunk: Any) -> Any:
    if not isinstance(chunk, Mapping):
        return {}  # refused by check_chunk in the child ("a chunk needs 'id'")
    out = {k: (v if isinstance(v, (str, int, float, bool)) or v is None else None)
           for k, v in chunk.items() if k in ("id", "document_id", "text")}
    if "vector" in chunk:
        out["vector"] = _floats(chunk["vector"])
    metadata = chunk.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        out["metadata"] = "not an object"  # refused in the child: "a chunk's metadata must be an object"
    else:
        try:  # JSON's view of it, as pgvector stores it (tuples become lists, keys strings)
            out["metadata"] = json.loads(json.dumps(metadata))
        except (TypeError, ValueError):
            out["metadata"] = {UNSERIALISABLE: True}
    return out


def _check_names(tenant: Any, collection: Any) -> None:
    check_name("tenant", tenant)
    check_name("collection", collection)


class WeaviateStore(VectorStore):
    def __init__(self, url: str | None = None, api_key: str | None = None, *, class_prefix: str = "Scaigrid",
                 timeout: float = 30.0, workers: int = 8):
        """`url`: else SCAIGRID_WEAVIATE_URL; `api_key`: else SCAIGRID_WEAVIATE_API_KEY (optional).
        `class_prefix`: starts every Weaviate collection name, so installations can share one Weaviate.
        Connects at once: a Weaviate that is down raises StoreDown, one line naming it and the URL."""
        self.url = url or os.environ.get("SCAIGRID_WEAVIATE_URL") or ""
        if not self.url:
            raise ValueError("the Weaviate vector store needs a URL: set SCAIGRID_WEAVIATE_URL "
                             "(e.g. http://127.0.0.1:8080?grpc_port=50051)")
        if not class_prefix[:1].isupper() or not class_prefix.isalnum() or not class_prefix.isascii():
            raise ValueError("class_prefix must be ASCII letters and digits starting with a capital")
        if importlib.util.find_spec("weaviate") is None or importlib.util.find_spec("snowballstemmer") is None:
            raise RuntimeError("the Weaviate vector store needs the `weaviate` extra: pip install 'scaigrid[weaviate]'")
        self.timeout = timeout + 10  # per call here: the client's own timeout, plus the trip
        api_key = api_key if api_key is not None else os.environ.get("SCAIGRID_WEAVIATE_API_KEY") or None
        self.process = OffHubProcess(TARGET, kwargs={**parse_url(self.url), "api_key": api_key,
                                                     "class_prefix": class_prefix, "timeout": timeout},
                                     workers=workers, timeout=self.timeout, name=f"weaviate at {self.url}")
        try:
            self.process.start()
        except Exception as exc:  # every failure to connect has its own class; the line is what matters
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreDown(f"cannot reach the vector store (Weaviate) at {self.url} ({reason}); "
                            "start it or point SCAIGRID_WEAVIATE_URL at it") from None

    def ensure_collection(self, tenant: str, collection: str, dimensions: int) -> None:
        _check_names(tenant, collection)
        if isinstance(dimensions, bool) or not isinstance(dimensions, int) or not 1 <= dimensions <= MAX_DIMENSIONS:
            raise ValueError(f"dimensions must be an integer from 1 to {MAX_DIMENSIONS} (Weaviate's limit)")
        self.process.call("ensure_collection", tenant, collection, dimensions)

    def upsert(self, tenant: str, collection: str, chunks: Iterable[Mapping[str, Any]]) -> int:
        _check_names(tenant, collection)
        portable = [_portable_chunk(c) for c in chunks]
        # the child sends BATCH-sized insert_many requests, each allowed the client's insert timeout (90 s)
        batches = -(-len(portable) // BATCH)
        return self.process.call("upsert", tenant, collection, portable, timeout=self.timeout + 90 * batches)

    def delete_document(self, tenant: str, collection: str, document_id: str) -> int:
        check_name("document_id", document_id)
        _check_names(tenant, collection)
        return self.process.call("delete_document", tenant, collection, document_id)

    def drop_collection(self, tenant: str, collection: str) -> bool:
        _check_names(tenant, collection)
        return self.process.call("drop_collection", tenant, collection)

    def search_vector(self, tenant: str, collection: str, vector: list[float], k: int = 10,
                      filters: Mapping[str, Scalar] | None = None) -> list[Hit]:
        check_k(k)
        filters = check_filters(filters)
        _check_names(tenant, collection)
        return self.process.call("search_vector", tenant, collection, _floats(vector), k, filters)

    def search_keyword(self, tenant: str, collection: str, query: str, k: int = 10,
                       filters: Mapping[str, Scalar] | None = None) -> list[Hit]:
        filters = check_keyword_search(query, k, filters)
        _check_names(tenant, collection)
        return self.process.call("search_keyword", tenant, collection, query, k, filters)

    def get_chunks(self, tenant: str, collection: str, chunk_ids: Iterable[str],
                   filters: Mapping[str, Scalar] | None = None) -> list[Hit]:
        ids = [check_name("chunk id", i) for i in chunk_ids]
        filters = check_filters(filters)
        _check_names(tenant, collection)
        return self.process.call("get_chunks", tenant, collection, ids, filters)

    def server_version(self) -> str:
        return self.process.call("server_version")

    def close(self) -> None:
        self.process.close()
