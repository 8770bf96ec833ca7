"""The house rules a newcomer relies on, checked on every file: the engine knows no AI, each graph function is a
package of its own, no product file outgrows a read, nothing cites a document outside the repository."""
import re
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
AI_WORDS = re.compile(r"openai|chat\.completion|smollm|minilm", re.IGNORECASE)
MAX_LINES = 400


def tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z", *patterns], cwd=REPO, capture_output=True, check=True).stdout
    return [REPO / p for p in out.decode().split("\0") if p and (REPO / p).is_file()]


def test_the_runtime_names_no_model_api_or_provider():
    found = [f"{p.relative_to(REPO)}:{n}: {line.strip()}" for p in tracked("runtime")
             for n, line in enumerate(p.read_text().splitlines(), 1) if AI_WORDS.search(line)]
    assert not found, "runtime/ must know nothing of AI:\n" + "\n".join(found)


def test_every_graph_function_is_a_package_with_its_service():
    graph = yaml.safe_load((REPO / "graph.yaml").read_text())
    for name, spec in graph["functions"].items():
        module, _, cls = spec["entry"].partition(":")
        assert module == f"scaigrid.functions.{name}.service", f"{name}: entry {spec['entry']}"
        assert (REPO / "functions" / name / "service.py").is_file(), name
    helpers = sorted(p.name for p in (REPO / "functions").glob("*.py") if p.name != "__init__.py")
    assert not helpers, f"modules beside the function packages: {helpers} (a function's own or functions/shared/)"


def test_no_product_file_over_400_lines():
    long = [f"{p.relative_to(REPO)}: {n}" for p in tracked("functions", "runtime", "adapters")
            if p.suffix == ".py" and "migrations" not in p.parts
            and (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, f"over {MAX_LINES} lines: {long}"


def test_nothing_cites_a_design_document_outside_the_repo():
    name = "DESIGN" + ".md"  # spelled apart, so this file does not cite it either
    citing = [str(p.relative_to(REPO)) for p in tracked() if p.suffix not in (".png", ".ico", ".gz")
              and name in p.read_text(errors="ignore")]
    assert not citing, citing
