"""The labelled retrieval set for bench/retrieval.py, built from the Python 3.11 documentation in Debian's package.

No labelled IR test collection (Cranfield, CISI, NPL, CACM, BEIR, ...) ships inside a PyPI, npm or Debian package
that this project can fetch (docs/retrieval-bench.md lists what was checked), so the set is built from a public
corpus that does ship, with labels its authors wrote: the Python FAQ.

- corpus: every section of the HTML manual (python3.11-doc, pinned by version and sha256) with at least MIN_WORDS
  words of its own text (nested sections, headings and navigation lists left out). Headings are not part of the text.
- queries: every FAQ entry (a leaf section, h2 or deeper, of faq/*.html whose answer has MIN_WORDS words or more):
  the question is its heading.
- qrels: the FAQ entry's own answer, relevance 1; one relevant document per query (known-item question answering).

Usage: python bench/retrieval_data.py [--queries N] [--docs N] [--seed S] [--deb FILE]
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

PACKAGE, VERSION = "python3.11-doc", "3.11.2-6+deb12u8"  # Debian 12 (bookworm) main
SHA256 = "50eb63e7f636c4281e9ce1b8f10386f1def42159eddce34fc1f41c46261df71b"
SIZE = 12_642_400
HTML_ROOT = "usr/share/doc/python3.11/html/"
PARSER = 3  # bump when parsing changes: the cached dataset.json is rebuilt
MIN_WORDS = 8  # "See the next question." is no answer a retriever can find
CACHE = Path(os.environ.get("SCAIGRID_DATASETS", Path.home() / ".cache" / "scaigrid" / "datasets"))
# index and search pages repeat every title; _sources/_static are not pages
SKIP_PAGE = re.compile(r"^(genindex|py-modindex|search|contents)\b|^_")
HEADINGS = ["h1", "h2", "h3", "h4", "h5", "h6"]
BLOCKS = ["p", "li", "dt", "dd", "pre", "tr", "div", "blockquote", "caption", *HEADINGS]


class DatasetError(RuntimeError):
    """Something the user has to act on; the message says what."""


@dataclass
class Dataset:
    corpus: dict[str, dict]  # doc_id -> {"title", "text", "url"}
    queries: dict[str, str]  # qid -> question
    qrels: dict[str, dict[str, int]]  # qid -> {doc_id: relevance}
    source: str

    def fingerprint(self) -> str:
        """12 hex digits that change whenever any text or judgment does: numbers are comparable only when equal."""
        blob = json.dumps([self.corpus, self.queries, self.qrels], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


# fetching -----------------------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _apt_download(folder: Path) -> Path:
    if shutil.which("apt-get") is None:
        raise DatasetError(f"apt-get is not here (not Debian?): get {PACKAGE}_{VERSION}_all.deb some other way and "
                           f"pass it with --deb FILE (its sha256 must be {SHA256})")
    target = folder / f"{PACKAGE}_{VERSION.replace(':', '%3a')}_all.deb"
    proc = subprocess.Popen(["apt-get", "download", f"{PACKAGE}={VERSION}"], cwd=folder, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    reader.start()
    with tqdm(total=SIZE, unit="B", unit_scale=True, desc=f"apt-get download {PACKAGE}") as bar:
        while proc.poll() is None:  # apt writes the file in place: its size is the progress
            try:
                bar.update(target.stat().st_size - bar.n)
            except FileNotFoundError:
                pass
            threading.Event().wait(0.2)
        bar.update(SIZE - bar.n if proc.returncode == 0 else 0)
    reader.join(5)
    if proc.returncode != 0 or not target.exists():
        raise DatasetError(
            f"apt-get download {PACKAGE}={VERSION} failed:\n{''.join(out)[-800:]}\nNext: run `apt-get update` and try "
            f"again. If Debian no longer serves this version, fetch that exact .deb elsewhere and pass --deb FILE; a "
            f"new version is a new dataset (update VERSION/SHA256 here and the numbers in docs/retrieval-bench.md)")
    return target


def fetch(deb: str | Path | None = None) -> Path:
    """The pinned package in the cache, downloaded (or copied from `deb`) once and checked by sha256."""
    folder = CACHE / f"{PACKAGE}_{VERSION}"
    folder.mkdir(parents=True, exist_ok=True)
    cached = folder / f"{PACKAGE}_{VERSION}_all.deb"
    if not cached.exists():
        got = Path(deb) if deb else _apt_download(folder)
        if got != cached:
            shutil.copyfile(got, cached)
            if not deb:
                got.unlink()
    digest = _sha256(cached)
    if digest != SHA256:
        bad = cached.with_suffix(".deb.bad")
        cached.replace(bad)
        raise DatasetError(f"{bad} has sha256 {digest}, not the pinned {SHA256}: it is not {PACKAGE} {VERSION} "
                           f"(kept aside; run again to download it anew, or pass the right file with --deb)")
    return cached


def _deb_members(path: Path) -> dict[str, bytes]:
    """An ar archive (a .deb) -> {member: bytes}; the format is 60-byte headers, each member padded to even size."""
    data = path.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise DatasetError(f"{path} is not a Debian package (no ar header)")
    out, pos = {}, 8
    while pos + 60 <= len(data):
        name = data[pos:pos + 16].decode().strip().rstrip("/")
        size = int(data[pos + 48:pos + 58])
        out[name] = data[pos + 60:pos + 60 + size]
        pos += 60 + size + size % 2
    return out


def extract(deb: Path) -> Path:
    """The manual's HTML pages under <cache>/html (kept: a person can open a judged FAQ entry and check it)."""
    root = deb.parent / "html"
    if (root / ".complete").exists():
        return root
    members = _deb_members(deb)
    name = next((n for n in members if n.startswith("data.tar")), "")
    if not name.endswith((".xz", ".gz", ".tar")):  # Python's tarfile reads no .zst
        raise DatasetError(f"{deb}: no data.tar.xz/.gz inside (members: {sorted(members)})")
    with tarfile.open(fileobj=io.BytesIO(members[name])) as tar:
        pages = [m for m in tar.getmembers() if m.isfile() and m.name.lstrip("./").startswith(HTML_ROOT)
                 and m.name.endswith(".html")]
        for m in tqdm(pages, desc="extracting pages", unit="page"):
            rel = m.name.lstrip("./")[len(HTML_ROOT):]
            dest = root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(tar.extractfile(m).read())
    (root / ".complete").write_text(f"{len(pages)}\n")
    return root


# parsing ------------------------------------------------------------------------------------------------------------
# Marks the end of a block (and of a code line). Every other run of whitespace, line ends of the HTML source
# included, becomes one space. A private-use character: \s matches control characters such as \x1e.
BREAK = "\ue000"


def _lines(text: str) -> str:
    return "\n".join(line for line in (part.strip() for part in re.sub(r"\s+", " ", text).split(BREAK)) if line)


def parse_page(rel: str, html: str) -> list[dict]:
    """Every <section> of one Sphinx page: its heading, level, own text and whether it has sub-sections."""
    from bs4 import BeautifulSoup, Tag

    main = BeautifulSoup(html, "html.parser").select_one('div[role="main"]')
    if main is None:
        return []
    # local tables of contents and toctrees list other sections' titles (the FAQ questions!); ¶ links are noise
    for nav in main.select("nav.contents, div.contents, div.toctree-wrapper, a.headerlink"):
        nav.decompose()
    for block in main.find_all(BLOCKS):
        block.append(BREAK)
    for code in main.find_all("pre"):
        for piece in code.find_all(string=True):
            piece.replace_with(piece.replace("\n", BREAK))
    out = []
    for n, section in enumerate(main.find_all("section")):
        heading = section.find(HEADINGS, recursive=False)
        own = "".join(c.get_text() if isinstance(c, Tag) else str(c) for c in section.children
                      if not (isinstance(c, Tag) and (c.name == "section" or c is heading)))
        out.append({"id": f"{rel}#{n}", "url": f"{rel}#{section.get('id', '')}",
                    "title": _lines(heading.get_text(" ")) if heading else "",
                    "level": int(heading.name[1]) if heading else 0, "leaf": section.find("section") is None,
                    "text": _lines(own)})
    return out


def build(root: Path) -> Dataset:
    pages = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.html"))
    pages = [p for p in pages if not SKIP_PAGE.match(p)]
    corpus, queries, qrels = {}, {}, {}
    for rel in tqdm(pages, desc="parsing pages", unit="page"):
        for s in parse_page(rel, (root / rel).read_text(encoding="utf-8")):
            if len(s["text"].split()) < MIN_WORDS:
                continue
            corpus[s["id"]] = {"title": s["title"], "text": s["text"], "url": s["url"]}
            if rel.startswith("faq/") and s["level"] >= 2 and s["leaf"]:
                qid = f"q{len(queries) + 1:03d}"
                queries[qid] = s["title"]
                qrels[qid] = {s["id"]: 1}
    if len(queries) < 100 or len(corpus) < 3000:  # the pinned package gives 175 and 4,368: a parser change broke
        raise DatasetError(f"parsed only {len(queries)} queries / {len(corpus)} documents from {root}: the pages "
                           f"are not what the parser expects (delete {root} to extract them again)")
    return Dataset(corpus, queries, qrels, f"Debian {PACKAGE} {VERSION} (sha256 {SHA256[:12]}...), Python FAQ")


def load(deb: str | Path | None = None) -> Dataset:
    """The whole set, from <cache>/dataset.json once it has been built."""
    cached = CACHE / f"{PACKAGE}_{VERSION}" / f"dataset-v{PARSER}.json"
    if cached.exists():
        return Dataset(**json.loads(cached.read_text()))
    ds = build(extract(fetch(deb)))
    tmp = cached.with_suffix(".tmp")
    tmp.write_text(json.dumps(ds.__dict__))
    tmp.replace(cached)
    return ds


def subset(ds: Dataset, queries: int | None = None, docs: int | None = None, seed: int = 0) -> Dataset:
    """A smaller set that keeps every judgment of the queries kept.

    Queries: a seeded sample of `queries` (the first N would all come from one FAQ page). Documents: the judged
    ones, then a seeded sample of the others up to `docs` in all. The sample is fixed by (queries, docs, seed).
    Fewer distractors make the task easier: compare numbers of equal subsets only.
    """
    rng = random.Random(seed)
    qids = sorted(ds.queries)
    if queries is not None and queries < len(qids):
        qids = sorted(rng.sample(qids, queries))
    judged = {d for q in qids for d in ds.qrels[q]}
    keep = set(ds.corpus)
    if docs is not None and docs < len(ds.corpus):
        others = sorted(set(ds.corpus) - judged)
        keep = judged | set(rng.sample(others, max(0, min(len(others), docs - len(judged)))))
    return Dataset({d: v for d, v in ds.corpus.items() if d in keep}, {q: ds.queries[q] for q in qids},
                   {q: ds.qrels[q] for q in qids}, ds.source)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int)
    parser.add_argument("--docs", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--deb", help=f"a local copy of {PACKAGE}_{VERSION}_all.deb instead of apt-get download")
    parser.add_argument("--show", type=int, default=3, help="print this many queries with their answers")
    args = parser.parse_args()
    try:
        full = load(args.deb)
    except DatasetError as exc:
        sys.exit(f"retrieval_data: {exc}")
    ds = subset(full, args.queries, args.docs, args.seed)
    words = sum(len(d["text"].split()) for d in ds.corpus.values())
    print(f"{ds.source}\nfull set: {len(full.corpus)} documents, {len(full.queries)} queries, "
          f"fingerprint {full.fingerprint()}\nthis subset (seed {args.seed}): {len(ds.corpus)} documents "
          f"({words:,} words), {len(ds.queries)} queries, fingerprint {ds.fingerprint()}")
    for qid in list(ds.queries)[:args.show]:
        (doc, _), = ds.qrels[qid].items()
        print(f"\n{qid}: {ds.queries[qid]}\n  -> {doc} ({ds.corpus[doc]['url']}): {ds.corpus[doc]['text'][:160]}...")


if __name__ == "__main__":
    main()
