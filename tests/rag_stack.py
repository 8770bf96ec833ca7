"""The RAG tests' stack (tests/test_rag.py): the shipped graph with FalkorDB as its knowledge graph, two tenants
with a tenant-admin and a member key each, and acme's collection of documents in every format."""
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from conftest import bootstrap_key, launch
from test_documents import make_pdf
from scaigrid.adapters.graph.knowledge_graph import KnowledgeGraph
from scaigrid.runtime.testing import SCAIGRID

REPO = Path(__file__).resolve().parents[1]
CHAT = "smollm2-135m-instruct"

CURIE = ("Marie Curie was a physicist who worked in Paris. In 1895 Marie Curie married Pierre Curie at the town hall "
         "of Sceaux.")
PIERRE = "Pierre Curie studied piezoelectricity with his brother Jacques Curie before he met anyone famous."
ZEPHYR = ("# Project Zephyr\n\nThe access code of Project Zephyr is 4417. Only the night shift may use the access "
          "code.\n")
TEA = "<html><body><h1>Tea</h1><p>Green tea is steamed quickly after picking to stop oxidation.</p></body></html>"


class Api:
    """One key's view of the native API."""

    def __init__(self, base: str, key: str):
        self.http = httpx.Client(base_url=base + "/api/v1", headers={"Authorization": f"Bearer {key}"}, timeout=120)
        self.key = key

    def __getattr__(self, method):
        return getattr(self.http, method)

    def collection(self, name: str, **fields) -> dict:
        r = self.http.post("/collections", json={"name": name, **fields})
        assert r.status_code == 201, r.text
        return r.json()

    def upload(self, cid: str, name: str, text: str, **fields) -> dict:
        r = self.http.post(f"/collections/{cid}/documents", json={"name": name, "text": text, **fields})
        assert r.status_code == 202, r.text
        return r.json()

    def wait(self, job_id: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = self.http.get(f"/jobs/{job_id}").json()
            if job["status"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
                return job
            time.sleep(0.1)

    def search(self, cid: str, query: str, **fields) -> list[dict]:
        r = self.http.post(f"/collections/{cid}/search", json={"query": query, **fields})
        assert r.status_code == 200, r.text
        return r.json()["data"]


@pytest.fixture(scope="module")
def product(database_url, falkordb_url, tmp_path_factory):
    subprocess.run([*SCAIGRID, "models", "prepare"], check=True, timeout=3600)
    admin_key = bootstrap_key(database_url)
    graph = launch(REPO / "graph.yaml", tmp_path_factory.mktemp("rag"),
                   env={"SCAIGRID_DATABASE_URL": database_url, "SCAIGRID_NEO4J_URL": falkordb_url})
    admin = Api(graph.base_url, admin_key)
    for tenant in ("acme", "globex"):
        t = admin.post("/tenants", json={"name": tenant}).json()
        for role in ("tenant-admin", "member"):
            key = admin.post(f"/tenants/{t['id']}/keys", json={"name": role, "role": role}).json()["key"]
            setattr(graph, f"{tenant}_{role.split('-')[0]}", Api(graph.base_url, key))
    graph.kg = KnowledgeGraph(falkordb_url)
    yield graph
    graph.kg.close()
    graph.stop()


@pytest.fixture(scope="module")
def library(product):
    """acme's collection with a knowledge graph and four documents, one per format, indexed."""
    api = product.acme_tenant
    c = api.collection("library", knowledge_graph=True, description="mixed formats")
    docs = [api.upload(c["id"], "curie.txt", CURIE, metadata={"topic": "science"}),
            api.upload(c["id"], "pierre.txt", PIERRE, metadata={"topic": "science"}),
            api.upload(c["id"], "zephyr.md", ZEPHYR, metadata={"topic": "security"})]
    pdf = make_pdf(["Basalt is a dark volcanic rock.", "It cools quickly from lava."])
    r = api.post(f"/collections/{c['id']}/documents", files={"file": ("basalt.pdf", pdf, "application/pdf")},
                 data={"metadata": '{"topic": "geology"}'})
    assert r.status_code == 202, r.text
    docs.append(r.json())
    docs.append(api.upload(c["id"], "tea.html", TEA, content_type="text/html", metadata={"topic": "food"}))
    for d in docs:
        assert api.wait(d["job_id"])["status"] == "succeeded"
    c["docs"] = {d["name"]: d for d in docs}
    return c


