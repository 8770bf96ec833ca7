"""Every in-process cache that grows with tenants, plugins, collections or request ids stays at its cap when filled
past it, through the code that fills it in production, against real PostgreSQL and Redis: plugin chains and parsed
plugins (the plugins function hosted inline as the gateway hosts it, in an eventlet subprocess), pgvector's BM25
statistics, Weaviate's schema cache (with a server), ChunkSender's cancelled request ids. Memory under 10,000
tenants end to end: bench/tenants.py."""
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from scaigrid.adapters.sql.engine import engine_for, sessions_for
from scaigrid.adapters.sql.identity import IdentityRepository
from scaigrid.adapters.sql.migrate import upgrade
from scaigrid.adapters.sql.plugin_store import PluginRepository
from scaigrid.runtime.settings import Settings

CAP = 20
DEMO = Path(__file__).resolve().parent / "demo_functions"

GRAPH = """
version: 1
path: [{demo}]
functions:
  gateway: {{entry: scaigrid.functions.gateway.service:Gateway}}
  auth: {{entry: scaigrid.functions.auth.service:Auth, placement: inline, replicas: 0}}
  plugins:
    entry: scaigrid.functions.plugins.service:Plugins
    placement: inline
    replicas: 0
    config: {{plugin_cache_size: {cap}, plugin_parsed_cache_size: {cap}}}
  parrot: {{entry: demo:Parrot}}
routes:
  chat:
    http: POST /v1/chat/completions
    steps: [auth.authenticate, plugins.before, parrot.chat, plugins.after]
"""

# The plugins function's container, built and configured as the gateway's executor builds it for inline steps,
# in a monkey-patched process as in production (this test process stays unpatched). Runs `before` for every
# tenant twice (the second round finds most chains evicted), prints what it saw and the caches' sizes.
DRIVER = """
import eventlet
eventlet.monkey_patch()
import json, sys
from scaigrid.adapters.sql.plugin_store import PluginStore
from scaigrid.functions.plugins.service import ParsedPlugins
from scaigrid.runtime.graph_check import load_checked
from scaigrid.runtime.inline import InlineHost
from scaigrid.runtime.service import build_service, service_config
from scaigrid.runtime.settings import Settings

graph_file, database_url, tenants = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
graph, classes = load_checked(graph_file)
host = InlineHost(build_service(graph, "plugins", classes["plugins"]),
                  service_config(graph, "plugins", Settings(database_url=database_url)))
host.start()
store = next(d for d in host.container.dependencies if isinstance(d, PluginStore)).repository
parsed = next(d for d in host.container.dependencies if isinstance(d, ParsedPlugins)).cache
seen, sizes = [], []
for _ in range(2):
    for tenant in tenants:
        envelope = {"id": "r-" + tenant, "tenant": tenant, "context": {},
                    "request": {"body": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 500}}}
        body = host.call("before", (envelope,), timeout=10)["request"]["body"]
        seen.append([body["messages"][0]["content"], body["max_tokens"]])
        sizes.append([len(store.chains), len(parsed)])
host.stop()
print(json.dumps({"seen": seen, "sizes": sizes, "caps": [store.chains.maxsize, parsed.maxsize]}))
"""


@pytest.fixture(scope="module")
def migrated(database_url):
    upgrade(database_url)
    yield database_url
    engine_for(database_url).dispose()  # lru-cached per URL: let the throwaway database go


def test_plugin_chains_and_parsed_plugins_stay_at_their_caps(migrated, tmp_path):
    import redis

    identity = IdentityRepository(sessions_for(migrated, 2))
    plugins = PluginRepository(sessions_for(migrated, 2), redis.Redis.from_url(Settings().redis_url), ttl=30)
    tenants, expected = [], []
    for i in range(CAP + 10):  # each tenant one plugin, every other one a second: 45 plugins for a cap of 20
        tenant = identity.create_tenant(f"bounded-{i}-{uuid.uuid4().hex[:6]}", None)["id"]
        plugins.create(tenant, "policy", "system_prompt", {"content": f"policy of tenant {i}", "mode": "prepend"},
                       (), 10, True)
        if i % 2 == 0:
            plugins.create(tenant, "clamp", "max_tokens_clamp", {"max_tokens": 100 + i}, (), 20, True)
        tenants.append(tenant)
        expected.append([f"policy of tenant {i}", 100 + i if i % 2 == 0 else 500])
    graph = tmp_path / "graph.yaml"
    graph.write_text(GRAPH.format(demo=DEMO, cap=CAP))
    done = subprocess.run([sys.executable, "-c", DRIVER, str(graph), migrated, json.dumps(tenants)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["caps"] == [CAP, CAP]  # read from the function's graph.yaml config
    # every tenant got its own chain, in both rounds, evicted or not
    assert out["seen"] == expected + expected
    chains, parsed = zip(*out["sizes"])
    assert max(chains) == CAP and chains[-1] == CAP
    assert max(parsed) == CAP and parsed[-1] == CAP


def test_pgvector_bm25_statistics_stay_at_their_cap(migrated):
    from scaigrid.adapters.vector.provider import open_store

    store = open_store("pgvector", {"DATABASE_URL": migrated,
                                    "SCAIGRID_FUNCTION_CONFIG": {"vector_stats_cache_size": CAP}})
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    names = [f"c{i}" for i in range(CAP + 10)]
    first_scores = []
    for i, name in enumerate(names):
        store.ensure_collection(tenant, name, 4)
        # collections of different sizes, so a statistic served for the wrong collection would change the score
        store.upsert(tenant, name, [{"id": f"x{j}", "document_id": "d", "text": f"refund policy number {j}",
                                     "vector": [1.0, 0.0, 0.0, float(j)], "metadata": {}} for j in range(i + 1)])
        hits = store.search_keyword(tenant, name, "refund", k=1)
        first_scores.append(hits[0]["score"])
        assert len(store._stats) == min(i + 1, CAP)
    assert store._stats.maxsize == CAP
    # the evicted collections' statistics come back from PostgreSQL: the same ranking as before
    again = [store.search_keyword(tenant, name, "refund", k=1)[0]["score"] for name in names]
    assert again == pytest.approx(first_scores)
    assert len(store._stats) == CAP


@pytest.mark.skipif(not os.environ.get("SCAIGRID_TEST_WEAVIATE_URL"),
                    reason="set SCAIGRID_TEST_WEAVIATE_URL to fill the Weaviate schema cache on a real server")
def test_weaviate_schema_cache_stays_at_its_cap():
    pytest.importorskip("weaviate")
    from scaigrid.adapters.vector.weaviate import parse_url
    from scaigrid.adapters.vector.weaviate_client import WeaviateBackend

    prefix = f"Bounded{uuid.uuid4().hex[:6]}"
    backend = WeaviateBackend(**parse_url(os.environ["SCAIGRID_TEST_WEAVIATE_URL"]), class_prefix=prefix,
                              schema_cache_size=5)
    names = [f"c{i}" for i in range(8)]
    try:
        for name in names:  # every collection name is a Weaviate collection of its own
            backend.ensure_collection("acme", name, 4)
            backend.upsert("acme", name, [{"id": "x", "document_id": "d", "text": "refund", "vector": [1, 0, 0, 0],
                                           "metadata": {"lang": "en"}}])
            assert len(backend._properties) <= 5
        assert len(backend._properties) == 5
        hits = backend.get_chunks("acme", names[0], ["x"], {"lang": "en"})  # evicted: read again from the schema
        assert [h["chunk_id"] for h in hits] == ["x"]
    finally:
        for name in names:
            backend.drop_collection("acme", name)
        backend.close()


def test_cancelled_request_ids_stay_at_their_cap():
    from nameko.containers import ServiceContainer
    from nameko.rpc import rpc

    from scaigrid.runtime import streams

    class Model:
        name = "model"
        stream = streams.ChunkSender()

        @rpc
        def chat(self, envelope):
            return envelope

    container = ServiceContainer(Model, {"AMQP_URI": Settings().amqp_uri})
    sender = next(d for d in container.dependencies if isinstance(d, streams.ChunkSender))
    sender.setup()  # no broker traffic until something is published
    cap = streams.CANCEL_MEMORY
    for i in range(cap + 10):  # a flood of cancels, as the fanout consumer delivers them
        sender._on_cancel({"rid": f"r{i}"}, None)
    assert len(sender.cancelled) == cap
    assert sender.is_cancelled(f"r{cap + 9}") and not sender.is_cancelled("r0")
