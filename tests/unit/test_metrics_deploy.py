"""Where Prometheus finds every function's /metrics in the generated deployments: Kubernetes annotations and a named
port (a PodMonitor when asked), compose labels and an exposed port, a systemd port and folder of each unit's own."""
import json
import re
from pathlib import Path

import pytest
from cloudcoil.models.prometheus_operator.v1 import PodMonitor

from scaigrid.runtime.deploy import compose, k8s, systemd
from scaigrid.runtime.deploy.topology import load_topology
from scaigrid.runtime.deploy.values import DeployValues, MetricsValues

ROOT = Path(__file__).resolve().parents[2]
GRAPHS = [ROOT / "graph.yaml", ROOT / "tests" / "graphs" / "mixed.yaml"]


@pytest.fixture(params=GRAPHS, ids=["product", "mixed"], scope="module")
def topology(request):
    return load_topology(request.param, DeployValues())


def test_every_pod_says_where_its_metrics_are_on_a_port_it_names(topology):
    deployments = [d for d in k8s.manifests(topology, DeployValues()) if d["kind"] == "Deployment"]
    assert len(deployments) == len(topology.units) > 1
    for dep in deployments:
        template = dep["spec"]["template"]
        notes = template["metadata"]["annotations"]
        (container,) = template["spec"]["containers"]
        ports = {p["containerPort"]: p["name"] for p in container["ports"]}
        assert notes["prometheus.io/scrape"] == "true" and notes["prometheus.io/path"] == "/metrics"
        ingress = container["args"][1] == "gateway"
        assert ports[int(notes["prometheus.io/port"])] == ("http" if ingress else "metrics")
        env = {e["name"]: e.get("value") for e in container["env"]}
        # the supervisor binds every interface of its pod; the gateway serves /metrics on its HTTP port
        assert env.get("SCAIGRID_METRICS_ADDRESS") == (None if ingress else "0.0.0.0:9464")


def test_a_pod_monitor_only_when_asked_and_it_finds_both_kinds_of_port(topology):
    assert not [d for d in k8s.manifests(topology, DeployValues()) if d["kind"] == "PodMonitor"]
    values = DeployValues(metrics=MetricsValues(pod_monitor=True, monitor_labels={"release": "prometheus"},
                                                interval="15s", port=9500))
    docs = k8s.manifests(topology, values)
    (monitor,) = [d for d in docs if d["kind"] == "PodMonitor"]
    # the Prometheus Operator's own model; it ignores unknown keys, so the round trip must give back what we wrote
    parsed = PodMonitor.model_validate(monitor)
    assert parsed.model_dump(by_alias=True, exclude_none=True, mode="json") == monitor
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} == {"http", "metrics"}
    assert {e["interval"] for e in monitor["spec"]["podMetricsEndpoints"]} == {"15s"}
    selector = monitor["spec"]["selector"]["matchLabels"]
    for dep in (d for d in docs if d["kind"] == "Deployment"):
        assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        assert {p["name"] for p in container["ports"]} & {"http", "metrics"}
        assert 9500 in [p["containerPort"] for p in container["ports"]] or container["args"][1] == "gateway"


def test_compose_exposes_each_functions_metrics_on_its_network_with_labels(topology):
    services = compose.compose(topology, DeployValues())["services"]
    for unit in topology.units:
        svc = services[unit.name]
        assert svc["labels"]["prometheus.io/scrape"] == "true"
        if unit.ingress:
            assert svc["labels"]["prometheus.io/port"] == str(unit.port) and "expose" not in svc
        else:  # reachable by a Prometheus on the compose network, not published on the host
            assert svc["expose"] == ["9464"] and "ports" not in svc
            assert svc["environment"]["SCAIGRID_METRICS_ADDRESS"] == "0.0.0.0:9464"


def test_systemd_gives_every_unit_a_port_and_a_metrics_folder_of_its_own(topology):
    files = systemd.units(topology, DeployValues())
    seen: dict[int, str] = {}
    for unit in topology.units:
        text = files[f"scaigrid-{unit.name}@.service"]
        base = int(re.search(r"--metrics 0\.0\.0\.0:(\d+)$", text, re.M)[1])
        assert f"PROMETHEUS_MULTIPROC_DIR=/run/scaigrid/metrics/{unit.name}-%i" in text
        assert re.search(rf"^RuntimeDirectory=.* scaigrid/metrics/{unit.name}-%i$", text, re.M)
        for replica in range(systemd.PORTS_PER_FUNCTION):  # room for 100 replicas before the next function
            assert seen.setdefault(base + replica, unit.name) == unit.name, f"port {base + replica} taken twice"
    targets = json.loads(files["prometheus-targets.json"])
    assert {g["labels"]["unit"]: len(g["targets"]) for g in targets} == {
        f"scaigrid-{u.name}": u.replicas for u in topology.units}
    listed = [int(t.rsplit(":", 1)[1]) for g in targets for t in g["targets"]]
    assert len(set(listed)) == len(listed) and all(seen[p] for p in listed)


def test_systemd_ports_follow_the_values_port(topology):
    text = systemd.units(topology, DeployValues(metrics=MetricsValues(port=19000)))
    first = topology.units[0].name
    assert "--metrics 0.0.0.0:19000" in text[f"scaigrid-{first}@.service"]


def test_otel_variables_reach_every_function_container_and_nothing_else_passes_as_one(topology):
    values = DeployValues(otel={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector:4318"})
    (env_map,) = [m for m in k8s.manifests(topology, values) if m["kind"] == "ConfigMap" and
                  "SCAIGRID_LOG_LEVEL" in m.get("data", {})]
    assert env_map["data"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
    services = compose.compose(topology, values)["services"]
    functions = [services[n] for n in services if n.replace("-", "_") in {u.name for u in topology.units}]
    assert functions and all(s["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
                             for s in functions)
    with pytest.raises(ValueError, match="only OTEL_"):
        DeployValues(otel={"SCAIGRID_DATABASE_URL": "postgresql://x"})
