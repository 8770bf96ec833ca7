"""The distribution: one `scaigrid` namespace in site-packages, every sub-package and data file inside it,
extras that never install both onnxruntime builds."""
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(REPO)], check=True, capture_output=True, timeout=300)
    return zipfile.ZipFile(next(out.glob("scaigrid-*.whl")))


def test_only_the_scaigrid_namespace_lands_in_site_packages(wheel):
    tops = {name.split("/")[0] for name in wheel.namelist()}
    assert tops == {"scaigrid", next(t for t in tops if t.endswith(".dist-info"))}
    assert "scaigrid/__init__.py" not in wheel.namelist()  # a namespace: other distributions may add to it


def test_every_package_and_data_file_ships(wheel):
    names = set(wheel.namelist())
    for folder in ("runtime", "functions", "adapters"):
        for source in (REPO / folder).rglob("*.py"):
            rel = source.relative_to(REPO).as_posix()
            if "__pycache__" not in rel:
                assert f"scaigrid/{rel}" in names, f"{rel} is missing from the wheel"
    assert "scaigrid/runtime/graph.schema.json" in names
    assert "scaigrid/adapters/sql/migrations/script.py.mako" in names


def test_cpu_and_gpu_extras_are_exclusive(wheel):
    meta = Parser().parsestr(wheel.read(next(n for n in wheel.namelist() if n.endswith("METADATA"))).decode())
    requires = meta.get_all("Requires-Dist")
    cpu = [r for r in requires if 'extra == "cpu"' in r]
    gpu = [r for r in requires if 'extra == "gpu"' in r]
    assert cpu and all(r.startswith("onnxruntime") and not r.startswith("onnxruntime-gpu") for r in cpu)
    assert gpu and all(r.startswith("onnxruntime-gpu") for r in gpu)
    console = wheel.read(next(n for n in wheel.namelist() if n.endswith("entry_points.txt"))).decode()
    assert "scaigrid = scaigrid.runtime.cli:main" in console
