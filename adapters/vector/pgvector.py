"""The default VectorStore: PostgreSQL + pgvector, through the process's pooled SQLAlchemy engine (psycopg2).

Layout (models.py): `vector_collections` maps (tenant, name) to an id and a dimension; `vector_chunks` is partitioned
by collection id, and each collection's partition carries an HNSW index on `embedding::vector(N)` (cosine) plus the
parent's GIN index on a generated tsvector. Every statement names the tenant in its WHERE clause, and collection
ids are only ever looked up through (tenant, name): a tenant cannot reach another's rows by any argument it passes.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from cachetools import TTLCache
from psycopg2.extras import execute_values
from sqlalchemy import Connection, Engine, text

from .base import (CollectionNotFound, DimensionMismatch, Hit, Scalar, VectorStore, check_chunk, check_filters,
                   check_k, check_keyword_search, check_name, check_vector)
from .models import PARTITION_PREFIX, TEXT_SEARCH_CONFIG

MAX_DIMENSIONS = 2000  # pgvector's HNSW limit for `vector`
DEFAULT_EF_SEARCH = 40  # pgvector's own default candidate list; raised per query when k is larger
LOCK_TIMEOUT = "5s"  # creating or dropping a collection locks tables briefly: fail rather than queue forever

STATS_TTL = 300.0
STATS_CACHE_SIZE = 10_000  # collections whose BM25 statistics a process keeps (two numbers each)
# BM25 over the partition's tsvectors. The question's words are its own tsvector's lexemes (stemmed, stop words
# gone, never an error on user input); a chunk matches when it holds any of them (GIN index), and scores
#   sum over those words of idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))
# with tf the word's positions in the chunk, dl the chunk's distinct lexemes, idf = ln(1 + (N - df + 0.5)/(df + 0.5)).
BM25 = f"""
WITH idf AS MATERIALIZED (
  SELECT w.lexeme, ln(1 + (:n - d.df + 0.5) / (d.df + 0.5)) AS weight
  FROM (SELECT DISTINCT lexeme FROM unnest(to_tsvector('{TEXT_SEARCH_CONFIG}', :query))) w,
       LATERAL (SELECT count(*) AS df FROM vector_chunks x WHERE x.collection_id = :c AND x.tenant_id = :t
                AND x.tsv @@ plainto_tsquery('simple', w.lexeme)) d),
terms AS MATERIALIZED (
  SELECT array_agg(lexeme) AS lexemes,
         replace(plainto_tsquery('{TEXT_SEARCH_CONFIG}', :query)::text, ' & ', ' | ')::tsquery AS anyword FROM idf),
scored AS (
  SELECT c.id, sum(idf.weight * m.tf * 2.2 / (m.tf + 1.2 * (0.25 + 0.75 * length(c.tsv) / :avgdl))) AS score
  FROM vector_chunks c CROSS JOIN terms
  CROSS JOIN LATERAL (SELECT u.lexeme, coalesce(array_length(u.positions, 1), 1) AS tf FROM unnest(c.tsv) u
                      WHERE u.lexeme = ANY(terms.lexemes)) m
  JOIN idf ON idf.lexeme = m.lexeme
  WHERE c.collection_id = :c AND c.tenant_id = :t AND c.tsv @@ terms.anyword
    AND (NOT :filtered OR c.metadata @> CAST(:f AS jsonb))
  GROUP BY c.id, c.tsv
  ORDER BY score DESC, c.id LIMIT :k)
SELECT c.id, c.document_id, c.text, c.metadata, s.score
FROM scored s JOIN vector_chunks c ON c.id = s.id AND c.collection_id = :c AND c.tenant_id = :t
ORDER BY s.score DESC, c.id
"""

UPSERT = """
INSERT INTO vector_chunks (collection_id, tenant_id, id, document_id, text, metadata, embedding) VALUES %s
ON CONFLICT (collection_id, tenant_id, id) DO UPDATE SET document_id = excluded.document_id, text = excluded.text,
  metadata = excluded.metadata, embedding = excluded.embedding, updated_at = now()
"""


def vector_literal(values: list[float]) -> str:
    """pgvector's text form; repr keeps every float4 bit (pgvector stores float4)."""
    return "[" + ",".join(repr(v) for v in values) + "]"


def _hits(rows) -> list[Hit]:
    return [Hit(chunk_id=r["id"], document_id=r["document_id"], text=r["text"], score=float(r["score"]),
                metadata=r["metadata"] or {}) for r in rows]


class PgVectorStore(VectorStore):
    def __init__(self, engine: Engine, ef_search: int = DEFAULT_EF_SEARCH, stats_cache_size: int = STATS_CACHE_SIZE):
        """`ef_search`: HNSW's candidate list per query, recall against speed. 40 found the exact top 10 of
        clustered synthetic 384-dim data at 10,000 chunks; structureless random vectors, the worst case, need ~200
        for 0.8 (docs/vector-store.md, Numbers). `stats_cache_size`: collections whose BM25 statistics are kept,
        least recently searched dropped first (a dropped one costs one count query on its next search)."""
        self.engine = engine
        self.ef_search = ef_search
        self._iterative_scan: bool | None = None  # pgvector >= 0.8, detected on first filtered search
        # collection id -> (chunks, mean length). Ids are never reused (an identity column), so an entry is never
        # another collection's, only up to STATS_TTL stale.
        self._stats: TTLCache[int, tuple[int, float]] = TTLCache(max(1, stats_cache_size), STATS_TTL)

    # collections ------------------------------------------------------------------------------------------------
    def _collection(self, conn: Connection, tenant: str, collection: str, lock: bool = False) -> tuple[int, int] | None:
        """(id, dimensions) of the tenant's collection. `lock` (FOR KEY SHARE) holds off a concurrent drop until
        the caller's writes commit, so they never target a partition that is going away."""
        row = conn.execute(text("SELECT id, dimensions FROM vector_collections WHERE tenant_id = :t AND name = :n"
                                + (" FOR KEY SHARE" if lock else "")), {"t": tenant, "n": collection}).first()
        return (int(row[0]), int(row[1])) if row else None

    def _require(self, conn: Connection, tenant: str, collection: str, lock: bool = False) -> tuple[int, int]:
        found = self._collection(conn, check_name("tenant", tenant), check_name("collection", collection), lock)
        if found is None:
            raise CollectionNotFound(collection)
        return found

    def ensure_collection(self, tenant: str, collection: str, dimensions: int) -> None:
        check_name("tenant", tenant)
        check_name("collection", collection)
        if isinstance(dimensions, bool) or not isinstance(dimensions, int) or not 1 <= dimensions <= MAX_DIMENSIONS:
            raise ValueError(f"dimensions must be an integer from 1 to {MAX_DIMENSIONS} (pgvector's HNSW limit)")
        with self.engine.begin() as conn:
            found = self._collection(conn, tenant, collection)
            if found is None:
                self._lock_collections(conn)
                found = self._collection(conn, tenant, collection)  # created while we waited?
            if found is None:
                cid = conn.scalar(text("INSERT INTO vector_collections (tenant_id, name, dimensions) "
                                       "VALUES (:t, :n, :d) RETURNING id"),
                                  {"t": tenant, "n": collection, "d": dimensions})
                self._create_partition(conn, int(cid), dimensions)
                return
            if found[1] != dimensions:
                raise DimensionMismatch(f"collection {collection!r} has {found[1]} dimensions, not {dimensions}")

    @staticmethod
    def _lock_collections(conn: Connection) -> None:
        """Creating or dropping a collection runs one at a time. Both end in DDL whose foreign key needs SHARE ROW
        EXCLUSIVE on vector_collections; two creators that had each inserted their row first (ROW EXCLUSIVE) would
        deadlock on it. Taken up front, the mode queues them instead; it still lets every search and chunk write
        through (they take ACCESS SHARE / ROW SHARE here)."""
        conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        conn.execute(text("LOCK TABLE vector_collections IN SHARE ROW EXCLUSIVE MODE"))

    @staticmethod
    def _create_partition(conn: Connection, cid: int, dimensions: int) -> None:
        """The collection's own table and HNSW index. Both names and numbers are integers from our own rows, so
        formatting them into DDL (which takes no bind parameters) is safe."""
        part = f"{PARTITION_PREFIX}{cid}"
        conn.execute(text(f"CREATE TABLE {part} PARTITION OF vector_chunks "
                          f"(CONSTRAINT {part}_dimensions CHECK (vector_dims(embedding) = {dimensions})) "
                          f"FOR VALUES IN ({cid})"))
        conn.execute(text(f"CREATE INDEX {part}_hnsw ON {part} "
                          f"USING hnsw ((embedding::vector({dimensions})) vector_cosine_ops)"))

    def drop_collection(self, tenant: str, collection: str) -> bool:
        check_name("tenant", tenant)
        check_name("collection", collection)
        with self.engine.begin() as conn:
            self._lock_collections(conn)
            # FOR UPDATE waits for upserts and deletes that hold the row (FOR KEY SHARE) to commit.
            cid = conn.scalar(text("SELECT id FROM vector_collections WHERE tenant_id = :t AND name = :n FOR UPDATE"),
                              {"t": tenant, "n": collection})
            if cid is None:
                return False
            # The partition first: deleting the row first would cascade row by row through every chunk.
            conn.execute(text(f"DROP TABLE IF EXISTS {PARTITION_PREFIX}{int(cid)}"))
            conn.execute(text("DELETE FROM vector_collections WHERE id = :id AND tenant_id = :t"),
                         {"id": cid, "t": tenant})
        return True

    # chunks -----------------------------------------------------------------------------------------------------
    def upsert(self, tenant: str, collection: str, chunks: Iterable[Mapping[str, Any]]) -> int:
        chunks = list(chunks)
        with self.engine.begin() as conn:
            cid, dimensions = self._require(conn, tenant, collection, lock=True)
            rows: dict[str, tuple] = {}  # by id, last wins: one INSERT .. ON CONFLICT may not touch a row twice
            for chunk in chunks:
                c = check_chunk(chunk, dimensions)
                try:
                    metadata = json.dumps(c["metadata"])
                except (TypeError, ValueError):
                    raise ValueError(f"chunk {c['id']!r}: metadata must be JSON-serialisable") from None
                rows[c["id"]] = (cid, tenant, c["id"], c["document_id"], c["text"], metadata,
                                 vector_literal(c["vector"]))
            if rows:
                # psycopg2's execute_values, as in the ledger: compiling big multi-VALUES statements costs more
                # than PostgreSQL's own work.
                cur = conn.connection.driver_connection.cursor()
                execute_values(cur, UPSERT, list(rows.values()), template="(%s, %s, %s, %s, %s, %s::jsonb, %s::vector)",
                               page_size=500)
                self._analyze_once(conn, cid)
        return len(rows)

    @staticmethod
    def _analyze_once(conn: Connection, cid: int) -> None:
        """ANALYZE a partition on its first write. Never analysed, the planner guesses `tenant_id = ...` picks
        almost no rows (it picks all of them) and prefers a btree scan plus sort over the HNSW index: exact but
        slow on a bulk-loaded collection until autovacuum gets to it. Once analysed, the estimate stays right
        however much the partition grows, so once is enough."""
        part = f"{PARTITION_PREFIX}{cid}"
        if conn.scalar(text("SELECT reltuples FROM pg_class WHERE oid = CAST(:p AS regclass)"), {"p": part}) <= 0:
            conn.execute(text(f"ANALYZE {part}"))

    def delete_document(self, tenant: str, collection: str, document_id: str) -> int:
        check_name("document_id", document_id)
        with self.engine.begin() as conn:
            try:
                cid, _ = self._require(conn, tenant, collection, lock=True)
            except CollectionNotFound:
                return 0
            result = conn.execute(text("DELETE FROM vector_chunks WHERE collection_id = :c AND tenant_id = :t "
                                       "AND document_id = :d"), {"c": cid, "t": tenant, "d": document_id})
            return result.rowcount

    # search -----------------------------------------------------------------------------------------------------
    def search_vector(self, tenant: str, collection: str, vector: list[float], k: int = 10,
                      filters: Mapping[str, Scalar] | None = None) -> list[Hit]:
        check_k(k)
        filters = check_filters(filters)
        with self.engine.begin() as conn:
            cid, dimensions = self._require(conn, tenant, collection)
            query = vector_literal(check_vector(vector, dimensions))
            ef_search = max(self.ef_search, k)  # HNSW returns at most ef_search rows
            if ef_search != DEFAULT_EF_SEARCH:
                conn.execute(text("SELECT set_config('hnsw.ef_search', :v, true)"), {"v": str(ef_search)})
            if filters and self._has_iterative_scan(conn):
                # Without it, HNSW hands over ef_search candidates and the filter may leave fewer than k of them.
                conn.execute(text("SELECT set_config('hnsw.iterative_scan', 'strict_order', true)"))
            # The ORDER BY expression is the index's expression (embedding::vector(N)), and collection_id prunes to
            # the one partition that has it: the planner takes the HNSW index.
            distance = f"(embedding::vector({dimensions}) <=> CAST(:q AS vector({dimensions})))"
            where = "collection_id = :c AND tenant_id = :t" + (" AND metadata @> CAST(:f AS jsonb)" if filters else "")
            sql = (f"SELECT id, document_id, text, metadata, 1 - {distance} AS score FROM vector_chunks "
                   f"WHERE {where} ORDER BY {distance} LIMIT :k")
            rows = conn.execute(text(sql), {"q": query, "c": cid, "t": tenant, "f": json.dumps(filters), "k": k})
            return _hits(rows.mappings())

    def search_keyword(self, tenant: str, collection: str, query: str, k: int = 10,
                       filters: Mapping[str, Scalar] | None = None) -> list[Hit]:
        """BM25 (k1 1.2, b 0.75) over PostgreSQL full text. ts_rank has no inverse document frequency, so a rare
        word of the question counted no more than "use" or "function": BM25 over the same chunks found the answer
        in the top 5 for 0.50 -> see docs/retrieval-bench.md. Document frequencies are counted per query through
        the GIN index (one count per distinct word of the question); the collection's size and mean chunk length
        are cached per process for a few minutes (a ranking statistic, not a result: slightly stale is fine)."""
        filters = check_keyword_search(query, k, filters)
        with self.engine.begin() as conn:
            cid, _ = self._require(conn, tenant, collection)
            total, mean_length = self._length_stats(conn, cid, tenant)
            rows = conn.execute(text(BM25), {"query": query, "c": cid, "t": tenant, "f": json.dumps(filters),
                                             "k": k, "n": total, "avgdl": mean_length, "filtered": bool(filters)})
            return _hits(rows.mappings())

    def _length_stats(self, conn: Connection, cid: int, tenant: str) -> tuple[int, float]:
        """(chunks, mean distinct words per chunk) of a collection, cached STATS_TTL seconds per process."""
        cached = self._stats.get(cid)
        if cached is not None:
            return cached
        row = conn.execute(text("SELECT count(*), coalesce(avg(length(tsv)), 1) FROM vector_chunks "
                                "WHERE collection_id = :c AND tenant_id = :t"), {"c": cid, "t": tenant}).first()
        total, mean_length = int(row[0]), max(float(row[1]), 1.0)
        self._stats[cid] = (total, mean_length)
        return total, mean_length

    def get_chunks(self, tenant: str, collection: str, chunk_ids: Iterable[str],
                   filters: Mapping[str, Scalar] | None = None) -> list[Hit]:
        ids = [check_name("chunk id", i) for i in chunk_ids]
        filters = check_filters(filters)
        with self.engine.begin() as conn:
            cid, _ = self._require(conn, tenant, collection)
            if not ids:
                return []
            sql = ("SELECT id, document_id, text, metadata, 0.0 AS score FROM vector_chunks "
                   "WHERE collection_id = :c AND tenant_id = :t AND id = ANY(:ids)"
                   + (" AND metadata @> CAST(:f AS jsonb)" if filters else ""))
            rows = conn.execute(text(sql), {"c": cid, "t": tenant, "ids": ids, "f": json.dumps(filters)})
            found = {h["chunk_id"]: h for h in _hits(rows.mappings())}
            return [found[i] for i in dict.fromkeys(ids) if i in found]

    def _has_iterative_scan(self, conn: Connection) -> bool:
        if self._iterative_scan is None:
            version = conn.scalar(text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")) or "0"
            self._iterative_scan = tuple(int(p) for p in version.split(".")[:2]) >= (0, 8)
        return self._iterative_scan
