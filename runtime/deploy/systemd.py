"""`scaigrid deploy systemd`: units for the virtual appliance (one VM on VMware ESXi or Proxmox VE, GPU passed
through), where systemd is the supervisor `scaigrid up` is elsewhere: one instance per function and replica.

`scaigrid-NAME@.service` is a template; `scaigrid-NAME@0.service`, `@1`, ... are its replicas, and
`scaigrid.target` wants exactly the graph's replicas. Stores run as the distribution's own services.
SCAIGRID_SECRET_KEY is a credential (LoadCredential) read from /etc/scaigrid/secret.key: a unit does not start
without the file, and the key is in no process's environment.
"""
from __future__ import annotations

import json

from .topology import SECRET_KEY, Topology, Unit
from .values import DeployValues

SECRET_KEY_FILE = "/etc/scaigrid/secret.key"
PORTS_PER_FUNCTION = 100  # metrics ports of one function's replicas: base + replica index, base 100 apart

# Debian 12's unit names for the stores (the appliance's OS)
STORE_UNITS = {"postgres": "postgresql.service", "redis": "redis-server.service", "rabbitmq": "rabbitmq-server.service"}


def instances(unit: Unit) -> list[str]:
    return [f"scaigrid-{unit.name}@{i}.service" for i in range(unit.replicas)]


def metrics_base(unit: Unit, topology: Topology, values: DeployValues) -> int:
    """The metrics port of a function's replica 0: metrics.port + 100 x the function's place among the graph's
    units (sorted by name); replica i serves at base + i. Every unit on the host has a port of its own."""
    return values.metrics.port + PORTS_PER_FUNCTION * [u.name for u in topology.units].index(unit.name)


def _ini(sections: list[tuple[str, list[tuple[str, str]]]], comment: str) -> str:
    out = [f"# {line}" for line in comment.splitlines()]
    for name, items in sections:
        out += ["", f"[{name}]"] + [f"{k}={v}" for k, v in items]
    return "\n".join(out) + "\n"


def function_unit(unit: Unit, topology: Topology, values: DeployValues, prefix: str, migrate: bool) -> str:
    """The template unit of one function; %i is the replica index."""
    stores = [STORE_UNITS[s] for s in unit.stores if s in STORE_UNITS]
    after = ["network-online.target", *stores]
    if migrate and "postgres" in unit.stores:
        after.append("scaigrid-migrate.service")
    if unit.ingress:
        # stop order is the reverse of start order: the gateway, started after the functions it calls,
        # drains first, while they still answer its requests in flight
        after += [i for other in topology.units if not other.ingress for i in instances(other)]
    service = [
        ("Type", "simple"),
        ("User", "scaigrid"),
        ("Group", "scaigrid"),
        ("EnvironmentFile", "/etc/scaigrid/scaigrid.env"),
        # the same key file on every host; systemd hands it over as $CREDENTIALS_DIRECTORY/SCAIGRID_SECRET_KEY,
        # the credential name adapters/secrets.py looks for
        ("LoadCredential", f"{SECRET_KEY}:{SECRET_KEY_FILE}"),
        ("Environment", "SCAIGRID_GRAPH=/etc/scaigrid/graph.yaml"),
        ("Environment", "SCAIGRID_HEARTBEAT_DIR=/run/scaigrid"),
        # a folder per unit: the replica's /metrics shows itself, and no series is counted by two targets
        ("Environment", f"PROMETHEUS_MULTIPROC_DIR=/run/scaigrid/metrics/{unit.name}-%i"),
        ("Environment", f"SCAIGRID_GRACE_SECONDS={values.grace_seconds}"),
        ("Environment", "SCAIGRID_SPOOL_DIR=/var/lib/scaigrid/spool"),  # in StateDirectory: kept across restarts
        ("ExecStart", f"{prefix}/bin/python -m scaigrid.runtime.worker --graph /etc/scaigrid/graph.yaml "
                      f"--function {unit.name} --replica %i --metrics 0.0.0.0:{metrics_base(unit, topology, values)}"),
        # keep trying, as Kubernetes does: at boot a store may still be starting (the replica exits 2 then)
        ("Restart", "always"),
        ("RestartSec", "5"),
        ("KillSignal", "SIGTERM"),
        ("TimeoutStopSec", str(values.grace_seconds + 10)),
        # shared by all replicas (heartbeats): keep it when one of them stops; the metrics folder is the unit's
        ("RuntimeDirectory", f"scaigrid scaigrid/metrics scaigrid/metrics/{unit.name}-%i"),
        ("RuntimeDirectoryPreserve", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("StateDirectory", "scaigrid"),  # /var/lib/scaigrid, owned by the user, writable under ProtectSystem
    ]
    if unit.values.gpu:
        # the passed-through GPU's device nodes (/dev/nvidia*) belong to these groups on Debian
        service.append(("SupplementaryGroups", "video render"))
    if unit.values.models:
        service.append(("Environment", "SCAIGRID_MODELS_DIR=/var/lib/scaigrid/models"))
    if unit.ingress and unit.port:
        service.append(("Environment", f"SCAIGRID_HTTP_ADDRESS=0.0.0.0:{unit.port}"))
    return _ini([
        ("Unit", [("Description", f"ScaiGrid function {unit.name}, replica %i"),
                  ("PartOf", "scaigrid.target"),
                  ("StartLimitIntervalSec", "0"),
                  ("Wants", " ".join(["network-online.target", *stores])),
                  ("After", " ".join(after))]),
        ("Service", service),
        ("Install", [("WantedBy", "scaigrid.target")]),
    ], f"Generated by `scaigrid deploy systemd` from graph.yaml (sha256 {topology.graph_digest}).\n"
       f"Health: {prefix}/bin/python -m scaigrid.runtime.deploy.health --function {unit.name} --replica N --ready\n"
       f"Metrics: http://HOST:{metrics_base(unit, topology, values)}+N/metrics (replica N)")


def migrate_unit(topology: Topology, prefix: str) -> str:
    return _ini([
        ("Unit", [("Description", "ScaiGrid database migrations"), ("PartOf", "scaigrid.target"),
                  ("Wants", "network-online.target postgresql.service"),
                  ("After", "network-online.target postgresql.service")]),
        ("Service", [("Type", "oneshot"), ("RemainAfterExit", "yes"), ("User", "scaigrid"), ("Group", "scaigrid"),
                     ("EnvironmentFile", "/etc/scaigrid/scaigrid.env"),
                     ("Environment", "SCAIGRID_GRAPH=/etc/scaigrid/graph.yaml"),
                     ("ExecStart", f"{prefix}/bin/scaigrid db upgrade")]),
        ("Install", [("WantedBy", "scaigrid.target")]),
    ], f"Generated by `scaigrid deploy systemd` (sha256 {topology.graph_digest}).")


def target(topology: Topology, migrate: bool) -> str:
    wants = [i for u in topology.units for i in instances(u)]
    if migrate:
        wants.insert(0, "scaigrid-migrate.service")
    return _ini([
        ("Unit", [("Description", "ScaiGrid: every function of graph.yaml with its replicas"),
                  ("Wants", " ".join(wants))]),
        ("Install", [("WantedBy", "multi-user.target")]),
    ], "Generated by `scaigrid deploy systemd`. Scale a function: edit replicas in graph.yaml and regenerate,\n"
       "or start one more now: systemctl start scaigrid-NAME@N.service")


def env_example(topology: Topology) -> str:
    lines = ["# /etc/scaigrid/scaigrid.env (chmod 600, owner root): the units read it",
             "SCAIGRID_AMQP_URI=amqp://scaigrid:CHANGE-ME@127.0.0.1:5672/scaigrid",
             "SCAIGRID_DATABASE_URL=postgresql://scaigrid:CHANGE-ME@127.0.0.1:5432/scaigrid",
             "SCAIGRID_REDIS_URL=redis://:CHANGE-ME@127.0.0.1:6379/0",
             "SCAIGRID_LOG_LEVEL=INFO",
             f"# {SECRET_KEY} does not go here: write it to {SECRET_KEY_FILE} (chmod 600, owner root), the",
             "# same on every host (NEW,OLD to rotate); the units load it as a credential"]
    lines += [f"{var}=CHANGE-ME" for var in topology.env_refs]
    return "\n".join(lines) + "\n"


def scrape_targets(topology: Topology, values: DeployValues, host: str = "127.0.0.1") -> str:
    """Prometheus file_sd_configs targets: every unit of the graph's replicas, labelled with its unit name (not
    `function`, which the series carry themselves)."""
    groups = [{"targets": [f"{host}:{metrics_base(u, topology, values) + i}" for i in range(u.replicas)],
               "labels": {"unit": f"scaigrid-{u.name}"}} for u in topology.units]
    return json.dumps(groups, indent=2) + "\n"


def units(topology: Topology, values: DeployValues, prefix: str = "/opt/scaigrid/venv") -> dict[str, str]:
    """File name -> content, in a stable order."""
    migrate = "postgres" in topology.stores
    files = {"scaigrid.target": target(topology, migrate)}
    if migrate:
        files["scaigrid-migrate.service"] = migrate_unit(topology, prefix)
    for unit in topology.units:
        files[f"scaigrid-{unit.name}@.service"] = function_unit(unit, topology, values, prefix, migrate)
    files["scaigrid.env.example"] = env_example(topology)
    files["prometheus-targets.json"] = scrape_targets(topology, values)
    return files
