"""The fast layer: pure logic, and single functions built with nameko's worker_factory over the real stores
(PostgreSQL, Redis). Nothing here starts a graph or a subprocess; `pytest -m unit` runs it alone, first in CI."""
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items):
    for item in items:
        if HERE in Path(item.fspath).parents:
            item.add_marker(pytest.mark.unit)
