"""What the generators deploy, read from graph.yaml: one unit per function that runs processes.

Shared by compose.py, k8s.py and systemd.py so that all three agree on names, queues, ports and stores.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from contextlib import contextmanager

import yaml

from ..graph import ENV_REF, Graph
from ..graph_check import is_ingress, load_checked
from ..service import after_methods
from ..service import after_queue as service_after_queue
from .values import DeployValues, FunctionValues, ValuesError

HTTP_PORT = 8000  # the port an HTTP function listens on inside its container (SCAIGRID_HTTP_ADDRESS)
GRAPH_DIR = "/etc/scaigrid"  # where containers find graph.yaml (the image's copy, or a ConfigMap / bind mount)
MODELS_DIR = "/models"
SPOOL_DIR = "/var/lib/scaigrid/spool"  # after-step events the broker has not confirmed (runtime/spool.py)
# encrypts stored secrets (adapters/secrets.py); every generator requires it from the operator's secrets
SECRET_KEY = "SCAIGRID_SECRET_KEY"
MAKE_SECRET_KEY = 'python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'


def container_settings(values: DeployValues) -> dict[str, str]:
    """The non-secret environment of every function container, compose and Kubernetes alike (as the image sets)."""
    return {
        "SCAIGRID_GRAPH": f"{GRAPH_DIR}/graph.yaml",
        "SCAIGRID_HTTP_ADDRESS": f"0.0.0.0:{HTTP_PORT}",  # a container listens on its own interface
        "SCAIGRID_MODELS_DIR": MODELS_DIR,
        "SCAIGRID_HEARTBEAT_DIR": "/tmp/scaigrid-heartbeat",  # noqa: S108  (the pod's own emptyDir)
        "SCAIGRID_GRACE_SECONDS": str(values.grace_seconds),
        "SCAIGRID_LOG_LEVEL": values.log_level,
        **values.otel,  # tracing's standard variables (each process names itself: OTEL_SERVICE_NAME is not needed)
    }


@dataclass(frozen=True)
class Unit:
    """One function that runs its own processes (replicas > 0)."""

    name: str
    replicas: int
    ingress: bool
    stores: tuple[str, ...]  # stores its processes reach, including those of inline functions it hosts
    queues: tuple[str, ...]  # the RabbitMQ queues its replicas consume: what KEDA scales it on
    port: int | None  # HTTP port of an ingress function
    values: FunctionValues

    @property
    def dns_name(self) -> str:
        """Kubernetes object and compose service names allow no '_'."""
        return "scaigrid-" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Topology:
    graph: Graph
    graph_text: str
    units: tuple[Unit, ...]
    env_refs: tuple[str, ...]  # ${VAR}s in function configs: secrets that must reach the pods

    @property
    def stores(self) -> tuple[str, ...]:
        return tuple(sorted({s for u in self.units for s in u.stores}))

    @property
    def graph_digest(self) -> str:
        """Pods carry it as an annotation: a changed graph.yaml rolls them."""
        return hashlib.sha256(self.graph_text.encode()).hexdigest()[:16]


def rpc_queue(function: str) -> str:
    """nameko's RPC queue of a service."""
    return f"rpc-{function}"


def after_queue(function: str, method: str) -> str:
    """The durable queue of an after-step (as the runtime declares it)."""
    return service_after_queue(f"{function}.{method}").name


def config_env_refs(graph_text: str) -> tuple[str, ...]:
    """Names of the ${VAR}s that functions' config blocks use, from the raw file (before expansion)."""
    def walk(value) -> set[str]:
        if isinstance(value, str):
            return {m.group(1) for m in ENV_REF.finditer(value)}
        items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        return set().union(*map(walk, items))

    functions = (yaml.safe_load(graph_text) or {}).get("functions") or {}
    return tuple(sorted(walk([(fn or {}).get("config") or {} for fn in functions.values()])))


def _queues(graph: Graph, name: str) -> tuple[str, ...]:
    # an inline function's steps and calls run inside its callers: only its after-steps, and what its inline copies
    # hand on to its replicas (OwnReplicas), reach its own queues
    spec = graph.functions[name]
    called = (spec.placement == "remote" or spec.replicas > 0) and (
        any(s.function == name for r in graph.routes.values() for s in r.step_specs())
        or any(ref.split(".", 1)[0] == name for fn in graph.functions.values() for ref in fn.calls))
    queues = [rpc_queue(name)] if called else []
    return tuple(queues + [after_queue(name, m) for m in after_methods(graph, name)])


def _port(graph: Graph, name: str) -> int:
    address = str(graph.functions[name].config.get("address") or "")
    return int(address.rsplit(":", 1)[1]) if ":" in address else HTTP_PORT


@contextmanager
def _environ(extra: dict[str, str]):
    """Environment variables set for the duration of a block, then removed again."""
    os.environ.update(extra)
    try:
        yield
    finally:
        for name in extra:
            os.environ.pop(name, None)


def load_topology(graph_file: str | Path, values: DeployValues) -> Topology:
    """Load and check graph.yaml (its code is imported, as `scaigrid graph check` does) and list the units.

    ${VAR}s in config need not be set here: they are expanded in the pods, from the Secret.
    """
    text = Path(graph_file).read_text()
    refs = config_env_refs(text)
    placeholders = {ref: f"${{{ref}}}" for ref in refs if ref not in os.environ}
    with _environ(placeholders):
        graph, classes = load_checked(graph_file)
    unknown = sorted(set(values.functions) - set(graph.functions))
    if unknown:
        raise ValuesError(f"values: functions {', '.join(unknown)} are not in {graph.file}; "
                          f"use one of: {', '.join(sorted(graph.functions))}")
    inline = [n for n, f in graph.functions.items() if f.placement == "inline"]
    units = []
    for name in sorted(graph.functions):
        spec = graph.functions[name]
        if spec.replicas == 0:
            continue  # inline-only: it runs inside its callers' processes
        ingress = is_ingress(classes[name])
        # an ingress function hosts every inline step of the routes; others, the inline functions they call
        hosted = inline if ingress else [c.split(".", 1)[0] for c in spec.calls if c.split(".", 1)[0] in inline]
        stores = {"rabbitmq"} | {s for n in [name, *hosted] for s in getattr(classes[n], "stores", ())}
        units.append(Unit(name=name, replicas=spec.replicas, ingress=ingress, stores=tuple(sorted(stores)),
                          queues=_queues(graph, name), port=_port(graph, name) if ingress else None,
                          values=values.for_function(name)))
    return Topology(graph=graph, graph_text=text, units=tuple(units), env_refs=refs)
