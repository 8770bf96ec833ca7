"""Labels and object metadata shared by every generated Kubernetes object (k8s.py, keda.py)."""
from __future__ import annotations

from .values import DeployValues


def labels(component: str) -> dict:
    """The recommended app.kubernetes.io labels; `component` is the function name."""
    return {"app.kubernetes.io/name": "scaigrid", "app.kubernetes.io/component": component,
            "app.kubernetes.io/part-of": "scaigrid", "app.kubernetes.io/managed-by": "scaigrid-deploy"}


def selector(component: str) -> dict:
    """The labels a Deployment selects its pods by (a subset of labels() that never changes)."""
    return {"app.kubernetes.io/name": "scaigrid", "app.kubernetes.io/component": component}


def meta(name: str, values: DeployValues, component: str) -> dict:
    return {"name": name, "namespace": values.namespace, "labels": labels(component)}
