"""Retrieval quality through the product's HTTP API: recall@5 and nDCG@10 of vector, keyword, hybrid and hybrid +
knowledge graph search, and ingestion chunks/s end to end, on the labelled set of bench/retrieval_data.py.

It starts what a user runs: FalkorDB (scripts/falkordb.sh) for the knowledge graph, a throw-away database with its
bootstrapped platform key, and the shipped graph.yaml under `scaigrid up`; then, over HTTP only: a tenant and its
tenant-admin key, a collection with `knowledge_graph: true` (default embedding model), every document uploaded
from a few threads, jobs polled until all succeeded, and each query searched once per mode, one at a time.

Scoring is passage -> document: a hit counts for its document (`metadata.doc_id`, set at upload), at the rank of its
best chunk; a document's further chunks are dropped (as MaxP does). The `--top-k` chunks asked for can so hold
fewer distinct documents. Measures come from ir-measures (pytrec_eval's R@5 and nDCG@10, mean over all queries;
a query with no hit scores 0).

Usage: python bench/retrieval.py [--queries N] [--docs N] [--seed S] [--top-k K] [--threads T] [--keep]
                                  [--no-knowledge-graph | --graph-url BOLT_URL]
       python bench/retrieval.py --offline-check      (BM25 in process over the same set: checks the judgments)
       python bench/retrieval.py --base-url URL --admin-key KEY   (a deployment already running: its own tenant)
See docs/retrieval-bench.md.
"""
from __future__ import annotations

import argparse
import math
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from retrieval_data import Dataset, DatasetError, load, subset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODES = ["vector", "keyword", "hybrid", "hybrid_graph"]
EQUAL = {"vector": 1.0, "keyword": 1.0, "graph": 1.0}  # plain RRF, beside the product's default weights
STOP = set("a an and are as at be by can do does for from how i if in is it its of on or that the this to what "
           "when where which why with you my me".split())


# scoring ------------------------------------------------------------------------------------------------------------
def documents_of(hits: list[dict]) -> list[str]:
    """Chunk hits -> dataset doc ids, each at its best chunk's rank."""
    seen: dict[str, None] = {}
    for hit in hits:
        doc = (hit.get("metadata") or {}).get("doc_id")
        if doc is not None:
            seen.setdefault(doc, None)
    return list(seen)


def evaluate(qrels: dict[str, dict[str, int]], rankings: dict[str, list[str]]) -> dict[str, float]:
    """Mean R@5 and nDCG@10 over every judged query (pytrec_eval skips queries without results: they count 0)."""
    import ir_measures
    from ir_measures import R, nDCG

    measures = {"recall@5": R @ 5, "nDCG@10": nDCG @ 10}
    run = {q: {d: float(len(docs) - i) for i, d in enumerate(docs)} for q, docs in rankings.items() if docs}
    per_query = {(m.query_id, str(m.measure)): m.value
                 for m in ir_measures.iter_calc(list(measures.values()), qrels, run)}
    return {name: sum(per_query.get((q, str(measure)), 0.0) for q in qrels) / len(qrels)
            for name, measure in measures.items()}


def offline_check(ds: Dataset, k: int) -> None:
    """BM25 (rank-bm25) over whole documents, in process: if the judgments parse right, far above chance."""
    from rank_bm25 import BM25Okapi

    def words(text: str) -> list[str]:
        return [w for w in re.findall(r"\w+", text.lower()) if w not in STOP]

    ids = list(ds.corpus)
    bm25 = BM25Okapi([words(ds.corpus[d]["text"]) for d in ids])
    rankings = {}
    for qid, query in ds.queries.items():
        scores = bm25.get_scores(words(query))
        rankings[qid] = [ids[i] for i in sorted(range(len(ids)), key=lambda i: -scores[i])[:k]]
    got = evaluate(ds.qrels, rankings)
    chance = {"recall@5": 5 / len(ids), "nDCG@10": sum(1 / len(ids) / math.log2(r + 2) for r in range(10))}
    print(f"\noffline check: BM25 (rank-bm25, whole documents) over {len(ids)} documents, {len(ds.queries)} queries")
    for name in got:
        print(f"  {name:9} {got[name]:.3f}   (chance: {chance[name]:.4f})")
    if got["recall@5"] < 10 * chance["recall@5"]:
        sys.exit("offline check FAILED: BM25 is near chance, the judgments do not match the documents")
    print("offline check OK: keyword retrieval is far above chance, the judgments match the documents")


# the product --------------------------------------------------------------------------------------------------------
class Api:
    def __init__(self, base_url: str, key: str, connections: int = 8):
        self.key = key
        self.http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=120,
                                 limits=httpx.Limits(max_connections=connections))

    def __call__(self, method: str, path: str, body: dict | None = None) -> dict:
        r = self.http.request(method, path, json=body)
        if r.status_code >= 400:
            raise RuntimeError(f"{method} {path} -> {r.status_code}: {r.text[:500]}")
        return r.json()


def tidy(api: Api, method: str, path: str) -> None:
    """Clean-up that warns instead of hiding the error that ended the run."""
    try:
        api(method, path)
    except Exception as exc:
        print(f"warning: clean-up {method} {path} failed: {exc}", file=sys.stderr)


def start_falkordb(stack: ExitStack, tmp: Path, keep: bool) -> str:
    # a kept FalkorDB outlives the bench's temporary folder: its pid file and log need one of their own
    folder = Path(tempfile.mkdtemp(prefix="sg-bench-falkordb-")) if keep else tmp / "falkordb"
    started = subprocess.run([str(ROOT / "scripts" / "falkordb.sh"), "start", str(folder)], capture_output=True,
                             text=True)
    if started.returncode != 0:
        raise RuntimeError(f"scripts/falkordb.sh start failed: {started.stderr.strip()}")
    if keep:
        print(f"kept: FalkorDB at {started.stdout.strip()} (scripts/falkordb.sh stop {folder} ends it)")
    else:
        stack.callback(subprocess.run, [str(ROOT / "scripts" / "falkordb.sh"), "stop", str(folder)])
    return started.stdout.strip()


def start_stack(stack: ExitStack, tmp: Path, keep: bool, bolt: str | None) -> tuple[str, str]:
    """A fresh database with its first platform key, graph.yaml under `scaigrid up` (with the knowledge graph at
    `bolt`, if any): (base URL, key)."""
    import psycopg2

    from scaigrid.runtime.testing import PG_ADMIN, GraphProcess, bootstrap_key

    name = f"sg_bench_retrieval_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(PG_ADMIN)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    db = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    if keep:
        print(f"kept: database {db}")
    else:
        stack.callback(admin.cursor().execute, f'DROP DATABASE "{name}" WITH (FORCE)')
    key = bootstrap_key(db)
    env = {"SCAIGRID_DATABASE_URL": db, "SCAIGRID_LOG_LEVEL": "WARNING"}
    if bolt:
        env["SCAIGRID_NEO4J_URL"] = bolt
    graph = GraphProcess(ROOT / "graph.yaml", tmp, env=env)
    stack.callback(graph.stop)
    print(f"starting graph.yaml (log: {graph.log_path}) ...", flush=True)
    graph.wait_ready(timeout=300)
    return graph.base_url, key


def ingest(api: Api, collection: str, ds: Dataset, threads: int) -> dict:
    """Upload every document from `threads` threads, then poll the jobs: the clock runs from the first upload to
    the last job seen finished (polled oldest first; ~0.2 s resolution)."""
    from tqdm import tqdm

    def upload(doc_id: str) -> dict:
        return api("POST", f"/api/v1/collections/{collection}/documents",
                   {"name": doc_id, "text": ds.corpus[doc_id]["text"], "content_type": "text/plain",
                    "metadata": {"doc_id": doc_id}})

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        accepted = list(tqdm(pool.map(upload, ds.corpus), total=len(ds.corpus), desc="uploading", unit="doc"))
    uploaded = time.perf_counter() - started
    pending, done = [a["job_id"] for a in accepted], {}
    with tqdm(total=len(pending), desc="ingestion jobs", unit="job") as bar:
        while pending:
            still, waiting = [], 0
            for i, job_id in enumerate(pending):
                if waiting >= 8:  # jobs run roughly in order: the rest are surely not done yet
                    still += pending[i:]
                    break
                job = api("GET", f"/api/v1/jobs/{job_id}")
                if job["status"] in ("succeeded", "failed", "cancelled"):
                    done[job_id] = job
                    bar.update(1)
                else:
                    still.append(job_id)
                    waiting += 1
            pending = still
            if pending:
                time.sleep(0.2)
    wall = time.perf_counter() - started
    failed = [j for j in done.values() if j["status"] != "succeeded"]
    return {"docs": len(accepted), "chunks": sum(j["chunks_total"] for j in done.values() if j not in failed),
            "wall": wall, "upload": uploaded, "failed": failed}


def search_all(api: Api, collection: str, ds: Dataset, modes: list[str], top_k: int) -> dict:
    from tqdm import tqdm

    out = {}
    variants = [(mode, mode, None) for mode in modes] + [
        (f"{mode} (equal weights)", mode, EQUAL) for mode in modes if mode.startswith("hybrid")]
    for label, mode, weights in variants:
        path = f"/api/v1/collections/{collection}/search"
        extra = {"weights": weights} if weights else {}
        api("POST", path, {"query": "warm-up", "top_k": top_k, "mode": mode})  # first-call costs are not latency
        rankings, ms, graph_found = {}, [], 0
        for qid, query in tqdm(ds.queries.items(), desc=f"searching ({label})", unit="query"):
            t = time.perf_counter()
            hits = api("POST", path, {"query": query, "top_k": top_k, "mode": mode, **extra})["data"]
            ms.append((time.perf_counter() - t) * 1000)
            rankings[qid] = documents_of(hits)
            graph_found += any("graph" in (h.get("sources") or []) for h in hits)
        out[label] = {**evaluate(ds.qrels, rankings), "ms": statistics.median(ms), "graph": graph_found}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, help="a seeded sample of this many queries (default: all 175)")
    parser.add_argument("--docs", type=int, default=1000,
                        help="documents in all: the judged ones plus a seeded sample (0: all 4,368)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top-k", type=int, default=10, help="chunks asked for per search (the API allows 100)")
    parser.add_argument("--threads", type=int, default=4, help="upload threads")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--graph-url", help="a Bolt server (e.g. Neo4j; SCAIGRID_NEO4J_USER/PASSWORD from the "
                        "environment) for the knowledge graph instead of starting FalkorDB")
    parser.add_argument("--no-knowledge-graph", action="store_true",
                        help="a collection without the knowledge graph (no hybrid_graph; ingestion skips spaCy)")
    parser.add_argument("--keep", action="store_true", help="keep the tenant, collection, database and FalkorDB")
    parser.add_argument("--offline-check", action="store_true", help="BM25 in process; starts nothing")
    parser.add_argument("--deb", help="a local copy of the pinned Debian package (see bench/retrieval_data.py)")
    parser.add_argument("--base-url", help="a running deployment instead of starting one (needs --admin-key)")
    parser.add_argument("--admin-key", help="its platform-admin key (the bench makes a tenant of its own)")
    args = parser.parse_args()
    try:
        ds = subset(load(args.deb), args.queries, args.docs or None, args.seed)
    except DatasetError as exc:
        sys.exit(f"retrieval: {exc}")
    header = (f"dataset: {ds.source}; {len(ds.corpus)} documents, {len(ds.queries)} queries "
              f"(--queries {args.queries or 'all'}, --docs {args.docs or 'all'}, seed {args.seed}), "
              f"fingerprint {ds.fingerprint()}")
    if args.offline_check:
        print(header)
        return offline_check(ds, 10)
    if bool(args.base_url) != bool(args.admin_key):
        sys.exit("retrieval: --base-url and --admin-key go together")
    modes = [m for m in args.modes.split(",") if not (args.no_knowledge_graph and m == "hybrid_graph")]
    tmp = Path(tempfile.mkdtemp(prefix="sg-bench-retrieval-"))  # the graph's log: kept when the run fails
    try:
        run(args, ds, header, modes, tmp)
    except BaseException:
        print(f"\nthe graph's log and FalkorDB's are kept in {tmp}", file=sys.stderr)
        raise
    shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, ds: Dataset, header: str, modes: list[str], tmp: Path) -> None:
    with ExitStack() as stack:
        kg = not args.no_knowledge_graph
        if args.base_url:
            base_url, key = args.base_url, args.admin_key
        else:
            bolt = (args.graph_url or start_falkordb(stack, tmp, args.keep)) if kg else None
            base_url, key = start_stack(stack, tmp, args.keep, bolt)
        platform = Api(base_url, key)
        tag = uuid.uuid4().hex[:8]
        tenant = platform("POST", "/api/v1/tenants", {"name": f"bench-retrieval-{tag}"})
        api = Api(base_url, platform("POST", f"/api/v1/tenants/{tenant['id']}/keys",
                                     {"name": "bench", "role": "tenant-admin"})["key"], args.threads + 2)
        collection = api("POST", "/api/v1/collections", {"name": f"retrieval-{tag}", "knowledge_graph": kg})
        if not args.keep:  # a tenant cannot be deleted: one left in a deployment of the user's is disabled
            if args.base_url:
                stack.callback(tidy, platform, "POST", f"/api/v1/tenants/{tenant['id']}/disable")
            stack.callback(tidy, api, "DELETE", f"/api/v1/collections/{collection['id']}")
        model = next((m for m in api("GET", "/api/v1/models")["data"] if m["id"] == collection["embedding_model"]),
                     {})
        stats = ingest(api, collection["id"], ds, args.threads)
        if stats["failed"]:
            first = stats["failed"][0]["error"] or ""
            hint = ("\nThe knowledge graph's server went away (its log is kept, see below); "
                    "--no-knowledge-graph measures the other modes"
                    ) if kg and "ServiceUnavailable" in first else ""
            sys.exit(f"retrieval: {len(stats['failed'])} ingestion jobs failed; the first: "
                     f"{first}{hint}")
        results = search_all(api, collection["id"], ds, modes, args.top_k)
        print(f"\n{header}")
        print(f"collection: embedding model {collection['embedding_model']} ({model.get('backend')}, "
              f"{model.get('provider')}), chunks of {collection['chunk_size']} tokens with "
              f"{collection['chunk_overlap']} overlap, knowledge graph {'on' if kg else 'off'}; search top_k "
              f"{args.top_k} chunks, scored per document")
        print(f"\n{'mode':<30}{'recall@5':>10}{'nDCG@10':>10}{'median search ms':>18}")
        for label, r in results.items():
            print(f"{label:<30}{r['recall@5']:>10.3f}{r['nDCG@10']:>10.3f}{r['ms']:>18.1f}")
        print("(default fusion weights: vector 0.75, keyword 0.25, graph 0.25; equal weights: plain RRF)")
        if "hybrid_graph" in results:
            print(f"(hybrid_graph: the graph contributed hits to {results['hybrid_graph']['graph']} of "
                  f"{len(ds.queries)} queries)")
        steps = "upload -> chunk -> embed -> pgvector" + (" -> entities -> graph" if kg else "")
        print(f"\ningestion end to end ({steps}), {args.threads} upload threads: "
              f"{stats['docs']} documents, {stats['chunks']} chunks in {stats['wall']:.1f} s = "
              f"{stats['chunks'] / stats['wall']:.1f} chunks/s, {stats['docs'] / stats['wall']:.1f} docs/s "
              f"(uploads accepted in {stats['upload']:.1f} s = {stats['docs'] / stats['upload']:.0f} docs/s)")
        if args.keep:
            print(f"kept: tenant {tenant['id']}, collection {collection['id']}, tenant-admin key {api.key}")


if __name__ == "__main__":
    main()
