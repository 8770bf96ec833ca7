"""`scaigrid doctor` against the real stores: one line per check, each failure naming what to do, exit 1 when one
failed; nothing is started or changed by it."""
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from scaigrid.runtime.testing import SCAIGRID, free_port, throwaway_database

REPO_GRAPH = Path(__file__).resolve().parents[1] / "graph.yaml"


@pytest.fixture
def base_env():
    return {k: v for k, v in os.environ.items() if not k.startswith("SCAIGRID_")}


def doctor(env: dict, graph=REPO_GRAPH) -> tuple[int, dict[str, str], str]:
    """(exit code, {check: "status detail -> fix"} from --json, the human output)."""
    run = [*SCAIGRID, "doctor", "--graph", str(graph)]
    human = subprocess.run(run, capture_output=True, text=True, timeout=120, env=env)
    done = subprocess.run([*run, "--json"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == human.returncode
    lines = {c["name"]: f"{c['status']} {c['detail']} -> {c['fix']}" for c in json.loads(done.stdout)}
    return done.returncode, lines, human.stdout


def test_a_healthy_deployment_is_all_ok(database_url, base_env):
    env = {**base_env, "SCAIGRID_DATABASE_URL": database_url}
    subprocess.run([*SCAIGRID, "db", "upgrade"], check=True, capture_output=True, env=env, timeout=120)
    code, lines, human = doctor(env)
    assert code == 0, lines
    assert len(human.splitlines()) == len(lines)  # one line per check
    assert {"graph", "postgres", "rabbitmq", "redis", "schema", "execution", "knowledge graph"} <= set(lines)
    assert all(line.startswith(("ok", "warn")) for line in lines.values()), lines


def test_each_failure_says_what_to_do(tmp_path, base_env):
    dead = free_port()
    spec = yaml.safe_load(REPO_GRAPH.read_text())
    spec["functions"]["inference"]["config"]["models"] += [
        {"id": "keyless", "kind": "chat", "backend": "openai",
         "upstream": {"base_url": f"http://127.0.0.1:{dead}/v1", "api_key_env": "SCAIGRID_TEST_NO_SUCH_KEY"}},
        {"id": "gone", "kind": "chat", "backend": "openai", "upstream": {"base_url": f"http://127.0.0.1:{dead}/v1"}}]
    (tmp_path / "graph.yaml").write_text(yaml.safe_dump(spec))
    with throwaway_database("sg_doctor") as empty:  # a database nobody migrated
        code, lines, human = doctor({**base_env, "SCAIGRID_DATABASE_URL": empty,
                                     "SCAIGRID_MODELS_DIR": str(tmp_path / "m"),
                              "SCAIGRID_REDIS_URL": f"redis://127.0.0.1:{dead}/0",
                              "SCAIGRID_NEO4J_URL": f"bolt://127.0.0.1:{dead}"}, tmp_path / "graph.yaml")
    assert code == 1
    assert f"FAIL  redis" in human and "-> start it, or point SCAIGRID_REDIS_URL at it" in human
    assert lines["redis"].startswith("fail") and f"127.0.0.1:{dead}" in lines["redis"]
    assert "point SCAIGRID_REDIS_URL at it" in lines["redis"]
    assert lines["schema"].startswith("fail") and "scaigrid db upgrade" in lines["schema"]
    assert lines["model smollm2-135m-instruct"].startswith("warn") and "scaigrid models prepare" in lines[
        "model smollm2-135m-instruct"]
    assert lines["upstream keyless"].startswith("fail") and "SCAIGRID_TEST_NO_SUCH_KEY is not set" in lines[
        "upstream keyless"]
    assert lines["upstream gone"].startswith("fail") and "did not answer" in lines["upstream gone"]
    assert lines["knowledge graph"].startswith("fail") and "SCAIGRID_NEO4J_URL" in lines["knowledge graph"]
    assert lines["postgres"].startswith("ok") and lines["rabbitmq"].startswith("ok")
