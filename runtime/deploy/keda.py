"""KEDA objects: a ScaledObject per function scaling on its RabbitMQ queues, and the TriggerAuthentication that
reads the broker URI from the Secret (never inline: it carries the password).
"""
from __future__ import annotations

from .k8s_meta import meta
from .topology import Topology, Unit
from .values import DeployValues

AUTH_NAME = "scaigrid-rabbitmq"


def trigger_authentication(values: DeployValues) -> dict:
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": meta(AUTH_NAME, values, "autoscaling"),
        "spec": {"secretTargetRef": [{"parameter": "host", "name": values.secret, "key": "SCAIGRID_AMQP_URI"}]},
    }


def _triggers(unit: Unit) -> list[dict]:
    if unit.ingress:
        # the gateway consumes no work queue: it scales on CPU (its requests must be set, they are)
        return [{"type": "cpu", "metricType": "Utilization",
                 "metadata": {"value": str(unit.values.cpu_utilization)}}]
    return [{
        "type": "rabbitmq",
        "name": queue,
        # QueueLength: messages ready per replica; a replica's prefetch (its pool) is already in its hands
        "metadata": {"protocol": "amqp", "mode": "QueueLength", "value": str(unit.values.queue_length),
                     "queueName": queue},
        "authenticationRef": {"name": AUTH_NAME},
    } for queue in unit.queues]


def scaled_object(unit: Unit, values: DeployValues) -> dict | None:
    """None for a function with nothing to scale on (no queue, no HTTP): it keeps the graph's replicas."""
    triggers = _triggers(unit)
    if not triggers:
        return None
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": meta(unit.dns_name, values, unit.name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": unit.dns_name},
            # never below the graph's replicas: with none, steps would fail fast (503) instead of queueing
            "minReplicaCount": unit.replicas,
            "maxReplicaCount": unit.values.max_replicas or max(unit.replicas * 4, unit.replicas + 1),
            "pollingInterval": 15,
            "cooldownPeriod": 300,
            "triggers": triggers,
        },
    }


def keda_objects(topology: Topology, values: DeployValues) -> list[dict]:
    """The TriggerAuthentication (when a queue trigger needs it) and one ScaledObject per scalable function."""
    scaled = [so for so in (scaled_object(u, values) for u in topology.units) if so]
    uses_broker = any(t["type"] == "rabbitmq" for so in scaled for t in so["spec"]["triggers"])
    return ([trigger_authentication(values)] if uses_broker else []) + scaled
