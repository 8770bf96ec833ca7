"""Two minutes of bench/soak.py as a no-error smoke test: the shipped graph under its mix of chat (plain and
streamed), embeddings, RAG search and key creation, every answer checked. Its memory figures are printed, not
judged: growth over two minutes proves nothing (the 30-minute run in tox's bench env gives the verdict)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[1] / "bench" / "soak.py"


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_two_minutes_of_mixed_traffic_without_an_error():
    done = subprocess.run([sys.executable, str(SOAK), "--minutes", "2", "--smoke"], capture_output=True, text=True,
                          timeout=400)
    print(done.stdout, done.stderr[-4000:], sep="\n")  # CI shows the tables
    summary = re.search(r"^soak: (\d+) sent, (\d+) ok, (\d+) errors$", done.stdout, re.MULTILINE)
    assert summary, "no summary line: the soak stopped before its traffic ended"
    sent, ok, errors = map(int, summary.groups())
    assert errors == 0 and ok == sent > 0
    assert done.returncode == 0
