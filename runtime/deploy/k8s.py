"""`scaigrid deploy k8s`: Kubernetes manifests from graph.yaml, one Deployment per function.

Every function runs the same image as `scaigrid run NAME --replicas 1` (one replica per pod; the Deployment's
replicas are the graph's); HTTP functions get a Service and an Ingress; KEDA scales each function on its RabbitMQ
queue (keda.py). Secrets come from one Secret the operator creates; nothing secret is written here. Its
SCAIGRID_SECRET_KEY is required by name (secretKeyRef): a pod without it would not start rather than run with a
key of its own.
Targets Kubernetes 1.24+ (only GA APIs: apps/v1, batch/v1, networking.k8s.io/v1).
"""
from __future__ import annotations

from .k8s_meta import labels, meta, selector
from .keda import keda_objects
from .topology import (GRAPH_DIR, MAKE_SECRET_KEY, MODELS_DIR, SECRET_KEY, SPOOL_DIR, Topology, Unit,
                       container_settings)
from .values import DeployValues

UID = 10001  # the image's non-root user (deploy/Dockerfile)
GRAPH_CONFIGMAP = "scaigrid-graph"
ENV_CONFIGMAP = "scaigrid-env"
HEALTH = ["python", "-m", "scaigrid.runtime.deploy.health"]


def secret_keys(topology: Topology) -> list[str]:
    """Keys the Secret must hold: store URLs (they carry passwords) and the ${VAR}s graph.yaml's configs use."""
    urls = {"rabbitmq": "SCAIGRID_AMQP_URI", "postgres": "SCAIGRID_DATABASE_URL", "redis": "SCAIGRID_REDIS_URL"}
    return [urls[s] for s in topology.stores if s in urls] + [SECRET_KEY] + list(topology.env_refs)


def _probes(unit: Unit) -> dict:
    """HTTP functions: /healthz and /readyz. Others have no port: an exec probe reads this pod's heartbeat."""
    startup_failures = max(1, unit.values.startup_seconds // 5)
    if unit.ingress:
        def get(path: str) -> dict:
            return {"httpGet": {"path": path, "port": "http"}}
        return {
            "startupProbe": {**get("/healthz"), "periodSeconds": 5, "failureThreshold": startup_failures},
            "livenessProbe": {**get("/healthz"), "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 3},
            # /readyz: every remote function it calls has a consumer; it takes the pod out of the Service if not
            "readinessProbe": {**get("/readyz"), "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 2},
        }
    alive = {"exec": {"command": [*HEALTH, "--function", unit.name]}}
    ready = {"exec": {"command": [*HEALTH, "--function", unit.name, "--ready"]}}
    return {
        "startupProbe": {**alive, "periodSeconds": 5, "timeoutSeconds": 5, "failureThreshold": startup_failures},
        # heartbeats are 5 s apart and stale after 30 s: a hub blocked that long is restarted
        "livenessProbe": {**alive, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3},
        "readinessProbe": {**ready, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 2},
    }


def _resources(unit: Unit) -> dict:
    r = unit.values.resources
    out = {"requests": {"cpu": r.cpu, "memory": r.memory}, "limits": {}}
    if r.cpu_limit:
        out["limits"]["cpu"] = r.cpu_limit
    if r.memory_limit:
        out["limits"]["memory"] = r.memory_limit
    if unit.values.gpu:
        # extended resources go in limits (requests default to them); the device plugin hands out whole GPUs
        out["limits"]["nvidia.com/gpu"] = unit.values.gpu
    if not out["limits"]:
        del out["limits"]
    return out


def _container(unit: Unit, values: DeployValues) -> dict:
    container = {
        "name": unit.name.replace("_", "-"),
        "image": values.image_for(unit.values),
        "imagePullPolicy": values.image_pull_policy,
        "args": ["run", unit.name, "--replicas", "1"],
        "envFrom": [{"configMapRef": {"name": ENV_CONFIGMAP}}, {"secretRef": {"name": values.secret}}],
        # envFrom passes whatever keys the Secret has; this one must be there (the pod waits until it is)
        "env": [{"name": SECRET_KEY, "valueFrom": {"secretKeyRef": {"name": values.secret, "key": SECRET_KEY,
                                                                    "optional": False}}},
                {"name": "SCAIGRID_SPOOL_DIR", "value": SPOOL_DIR}],
        "resources": _resources(unit),
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "graph", "mountPath": GRAPH_DIR, "readOnly": True},
                         {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108  (heartbeats, metrics files)
                         # after-step events the broker has not confirmed: kept across a container restart
                         {"name": "spool", "mountPath": SPOOL_DIR}],
        **_probes(unit),
    }
    if unit.ingress:  # its /metrics is on this port
        container["ports"] = [{"name": "http", "containerPort": unit.port, "protocol": "TCP"}]
        # the Service drops the pod a moment after SIGTERM; keep accepting until it has
        container["lifecycle"] = {"preStop": {"exec": {"command": ["sleep", "5"]}}}
    else:  # no HTTP port: its supervisor serves the pod's /metrics here
        container["ports"] = [{"name": "metrics", "containerPort": values.metrics.port, "protocol": "TCP"}]
        container["env"].append({"name": "SCAIGRID_METRICS_ADDRESS", "value": f"0.0.0.0:{values.metrics.port}"})
    if unit.values.models:
        container["volumeMounts"].append({"name": "models", "mountPath": MODELS_DIR})
    return container


def _pod_spec(unit: Unit, values: DeployValues) -> dict:
    volumes = [{"name": "graph", "configMap": {"name": GRAPH_CONFIGMAP}}, {"name": "tmp", "emptyDir": {}},
               {"name": "spool", "emptyDir": {}}]
    if unit.values.models:
        volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": values.models_claim}}
                       if values.models_claim else {"name": "models", "emptyDir": {}})
    spec = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        # drain (grace) plus the preStop pause and the supervisor's own margin
        "terminationGracePeriodSeconds": values.grace_seconds + 15,
        "containers": [_container(unit, values)],
        "volumes": volumes,
    }
    node_selector = dict(unit.values.node_selector)
    if unit.values.gpu:
        node_selector = {**values.gpu_node_selector, **node_selector}
        spec["tolerations"] = [dict(t) for t in values.gpu_tolerations]
    if node_selector:
        spec["nodeSelector"] = node_selector
    return spec


def _pod_annotations(unit: Unit, topology: Topology, values: DeployValues) -> dict:
    """The graph's digest (a changed graph.yaml rolls the pods) and where annotation-based Prometheus scraping finds
    the pod's /metrics: every process of the pod (multiprocess folder), on the HTTP port or the metrics port."""
    return {"scaigrid.io/graph-sha256": topology.graph_digest,
            **values.metrics.scrape(unit.port if unit.ingress else values.metrics.port)}


def pod_monitor(values: DeployValues) -> dict:
    """One Prometheus Operator PodMonitor for every function's pods: a port named `http` (the gateway) or
    `metrics` (the rest). A PodMonitor, not a ServiceMonitor: only HTTP functions have a Service."""
    metadata = meta("scaigrid", values, "metrics")
    metadata["labels"] = {**metadata["labels"], **values.metrics.monitor_labels}
    endpoints = [{"port": port, "path": "/metrics", "interval": values.metrics.interval}
                 for port in ("http", "metrics")]
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor", "metadata": metadata,
            "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "scaigrid",
                                                  "app.kubernetes.io/part-of": "scaigrid"}},
                     "namespaceSelector": {"matchNames": [values.namespace]},
                     "podMetricsEndpoints": endpoints}}


def deployment(unit: Unit, topology: Topology, values: DeployValues) -> dict:
    """One function: `replicas` pods of one replica each."""
    # a GPU pool rarely has a spare GPU for a surge pod: replace one at a time instead
    rolling = {"maxSurge": 0, "maxUnavailable": 1} if unit.values.gpu else {"maxSurge": 1, "maxUnavailable": 0}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(unit.dns_name, values, unit.name),
        "spec": {
            "replicas": unit.replicas,
            "selector": {"matchLabels": selector(unit.name)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": rolling},
            "template": {
                "metadata": {"labels": labels(unit.name), "annotations": _pod_annotations(unit, topology, values)},
                "spec": _pod_spec(unit, values),
            },
        },
    }


def service(unit: Unit, values: DeployValues) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(unit.dns_name, values, unit.name),
        "spec": {"type": "ClusterIP", "selector": selector(unit.name),
                 "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]},
    }


def ingress(unit: Unit, values: DeployValues) -> dict:
    ing = values.ingress
    rule: dict = {"http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {
        "service": {"name": unit.dns_name, "port": {"name": "http"}}}}]}}
    if ing.host:
        rule = {"host": ing.host, **rule}
    spec: dict = {"rules": [rule]}
    if ing.class_name:
        spec = {"ingressClassName": ing.class_name, **spec}
    if ing.tls_secret and ing.host:
        spec["tls"] = [{"hosts": [ing.host], "secretName": ing.tls_secret}]
    metadata = meta(unit.dns_name, values, unit.name)
    if ing.annotations:
        metadata["annotations"] = dict(sorted(ing.annotations.items()))
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": metadata, "spec": spec}


def migrate_job(values: DeployValues) -> dict:
    """`scaigrid db upgrade` once per apply; pods also migrate on start, so a late Job is harmless."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta("scaigrid-db-upgrade", values, "db-upgrade"),
        "spec": {
            "backoffLimit": 10,
            "ttlSecondsAfterFinished": 3600,  # Jobs are immutable: gone after an hour, the next apply runs anew
            "template": {
                "metadata": {"labels": labels("db-upgrade")},
                "spec": {
                    "restartPolicy": "OnFailure",
                    "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "db-upgrade", "image": values.image, "imagePullPolicy": values.image_pull_policy,
                        "args": ["db", "upgrade"],
                        "envFrom": [{"configMapRef": {"name": ENV_CONFIGMAP}}, {"secretRef": {"name": values.secret}}],
                        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": [{"name": "graph", "mountPath": GRAPH_DIR, "readOnly": True},
                                         {"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108
                    }],
                    "volumes": [{"name": "graph", "configMap": {"name": GRAPH_CONFIGMAP}},
                                {"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def manifests(topology: Topology, values: DeployValues) -> list[dict]:
    """Every object, in apply order: namespace, config, migrations, then per function (sorted by name)."""
    objs: list[dict] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": values.namespace, "labels": labels("namespace")}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(GRAPH_CONFIGMAP, values, "config"),
         "data": {"graph.yaml": topology.graph_text}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(ENV_CONFIGMAP, values, "config"),
         "data": container_settings(values)},
    ]
    if "postgres" in topology.stores:
        objs.append(migrate_job(values))
    for unit in topology.units:
        objs.append(deployment(unit, topology, values))
        if unit.ingress:
            objs += [service(unit, values), ingress(unit, values)]
    if values.keda:
        objs += keda_objects(topology, values)
    if values.metrics.pod_monitor:
        objs.append(pod_monitor(values))
    return objs


def secrets_example(topology: Topology, values: DeployValues) -> str:
    """The env file an operator fills in and loads with kubectl: secrets never sit in the generated manifests."""
    hints = {
        "SCAIGRID_AMQP_URI": "amqp://scaigrid:CHANGE-ME@rabbitmq.scaigrid-stores:5672/scaigrid",
        "SCAIGRID_DATABASE_URL": "postgresql://scaigrid:CHANGE-ME@postgres.scaigrid-stores:5432/scaigrid",
        "SCAIGRID_REDIS_URL": "redis://:CHANGE-ME@redis.scaigrid-stores:6379/0",
    }
    lines = [f"# kubectl -n {values.namespace} create secret generic {values.secret} --from-env-file=secrets.env",
             "# the AMQP URI is also KEDA's: its RabbitMQ scaler reads the queue lengths with it",
             f"# {SECRET_KEY}: a Fernet key, the same for every pod (and any other host on this database); NEW,OLD",
             f"# to rotate. Make one: {MAKE_SECRET_KEY}"]
    lines += [f"{key}={hints.get(key, 'CHANGE-ME')}" for key in secret_keys(topology)]
    return "\n".join(lines) + "\n"
