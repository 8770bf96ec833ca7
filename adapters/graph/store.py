"""The knowledge graph's connection: Bolt URLs with credentials, one driver per process, and the DependencyProvider
that hands workers the process's KnowledgeGraph (or None where no graph is configured)."""
from __future__ import annotations

import os
from functools import lru_cache
from urllib.parse import unquote, urlsplit, urlunsplit

import neo4j
from nameko.extensions import DependencyProvider

from scaigrid.runtime.preflight import StoreDown
from scaigrid.runtime.settings import redact_url

from .knowledge_graph import KnowledgeGraph


def split_credentials(url: str, user: str | None, password: str | None) -> tuple[str, str | None, str | None]:
    """bolt://user:password@host:7687 -> (bolt://host:7687, user, password): the driver refuses credentials in the
    URL, and operators write them there (one secret to pass); explicit user/password win."""
    parts = urlsplit(url)
    if not parts.username:
        return url, user, password
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return (urlunsplit(parts._replace(netloc=host)), user or unquote(parts.username),
            password or unquote(parts.password or ""))


def driver_for(url: str, user: str | None = None, password: str | None = None) -> neo4j.Driver:
    """One driver per process and server: inline functions share their host's (FalkorDB leaks a Bolt socket per
    driver, and a driver is a connection pool anyway)."""
    return _driver(url, user or None, password or None)  # one cache key however the arguments were spelled


@lru_cache(maxsize=4)
def _driver(url: str, user: str | None, password: str | None) -> neo4j.Driver:
    return neo4j.GraphDatabase.driver(url, auth=(user, password or "") if user else None)


class KnowledgeGraphStore(DependencyProvider):
    """Hands workers the process's KnowledgeGraph.

    Container config `NEO4J_URL` (e.g. bolt://127.0.0.1:7687), else the function's config `neo4j_url`, else the
    environment's SCAIGRID_NEO4J_URL; likewise `NEO4J_USER`/`neo4j_user`/SCAIGRID_NEO4J_USER and
    `NEO4J_PASSWORD`/`neo4j_password`/SCAIGRID_NEO4J_PASSWORD (both optional: FalkorDB has no auth), and
    `NEO4J_DATABASE`/`neo4j_database`/SCAIGRID_NEO4J_DATABASE (Neo4j's default database when unset).
    """

    def __init__(self, required: bool = True, **kwargs):
        """required=False: with no URL configured the dependency is None (the function runs without a graph)."""
        self.required = required
        self.graph: KnowledgeGraph | None = None
        super().__init__(**kwargs)

    def setup(self):
        config = self.container.config
        function = config.get("SCAIGRID_FUNCTION_CONFIG", {})

        def setting(name: str) -> str | None:
            return config.get(name) or function.get(name.lower()) or os.environ.get(f"SCAIGRID_{name}") or None

        url = setting("NEO4J_URL")
        if not url and not self.required:
            return
        if not url:
            raise RuntimeError("the knowledge graph needs NEO4J_URL (e.g. bolt://127.0.0.1:7687): set "
                               "SCAIGRID_NEO4J_URL or the function's `neo4j_url` config")
        url, user, password = split_credentials(url, setting("NEO4J_USER"), setting("NEO4J_PASSWORD"))
        try:
            driver = driver_for(url, user, password)
            driver.verify_connectivity()
        except Exception as exc:  # a store that is down: one line naming it and its URL, not a traceback
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreDown(f"cannot reach the knowledge graph (Neo4j) at {redact_url(url)} ({reason}); "
                            "start it or point SCAIGRID_NEO4J_URL at it") from None
        self.graph = KnowledgeGraph(driver=driver, database=setting("NEO4J_DATABASE"))
        self.graph.url = url

    def get_dependency(self, worker_ctx):
        return self.graph


def doctor(settings, graph, down):
    """`scaigrid doctor`: the knowledge graph's Bolt server, where one is configured."""
    from scaigrid.runtime.doctor import Check

    url = os.environ.get("SCAIGRID_NEO4J_URL")
    if not url:
        yield Check("knowledge graph", "ok", "not configured: collections have no knowledge graph",
                    "set SCAIGRID_NEO4J_URL for one (./dev.sh up starts FalkorDB)")
        return
    url, user, password = split_credentials(url, os.environ.get("SCAIGRID_NEO4J_USER"),
                                            os.environ.get("SCAIGRID_NEO4J_PASSWORD"))
    try:
        driver_for(url, user, password).verify_connectivity()
        yield Check("knowledge graph", "ok", redact_url(url))
    except Exception as exc:  # the driver's errors vary; the line is what matters
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        yield Check("knowledge graph", "fail", f"cannot reach {redact_url(url)} ({reason})",
                    "start it, or point SCAIGRID_NEO4J_URL at it")
