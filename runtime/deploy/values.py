"""Deployment values: what graph.yaml does not say (images, resources, GPUs, autoscaling bounds, ingress host).

graph.yaml holds the topology (functions, replicas, routes); a values file (Helm's word) holds the infrastructure.
`deploy/values.yaml` in the repository is the product's default: the inference function on a GPU node.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..settings import METRICS_PORT


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Resources(Strict):
    """Kubernetes requests and limits of one pod (one replica)."""

    cpu: str = Field("250m", description="CPU request (KEDA's cpu trigger scales the gateway against it)")
    memory: str = Field("256Mi", description="memory request")
    cpu_limit: str | None = Field(None, description="CPU limit; none by default, so a busy replica may burst")
    memory_limit: str | None = Field("1Gi", description="memory limit")


class FunctionValues(Strict):
    """Per-function settings; `defaults` applies to every function, `functions.NAME` overrides it field by field."""

    gpu: int = Field(0, ge=0, description="NVIDIA GPUs per replica (nvidia.com/gpu); > 0 picks the GPU image")
    resources: Resources = Field(default_factory=Resources)
    node_selector: dict[str, str] = Field(default_factory=dict, description="extra node labels to run on")
    models: bool = Field(False, description="mount the models volume at SCAIGRID_MODELS_DIR")
    max_replicas: int | None = Field(None, ge=1, description="KEDA's ceiling (default: 4 x graph replicas)")
    queue_length: int = Field(20, ge=1, description="messages waiting per replica before KEDA adds one")
    cpu_utilization: int = Field(70, ge=1, le=100, description="HTTP functions: CPU % KEDA scales them on")
    startup_seconds: int = Field(300, ge=10, description="how long a replica may take to start (model loading)")


class IngressValues(Strict):
    host: str | None = Field(None, description="public host name; none: any host")
    class_name: str | None = Field("nginx", description="IngressClass")
    tls_secret: str | None = Field(None, description="TLS Secret for the host (e.g. made by cert-manager)")
    annotations: dict[str, str] = Field(default_factory=dict)


class MetricsValues(Strict):
    """Where Prometheus finds every function's /metrics (docs/observability.md)."""

    port: int = Field(METRICS_PORT, ge=1, le=65535,
                      description="the metrics port of a function without an HTTP port; on systemd the first of the "
                                  "per-unit ports (port + 100 x the function's place + replica)")
    pod_monitor: bool = Field(False, description="emit a Prometheus Operator PodMonitor (needs its CRDs)")
    monitor_labels: dict[str, str] = Field(default_factory=dict, description="labels the Prometheus's "
                                           "podMonitorSelector looks for, e.g. release: prometheus")
    interval: str = Field("30s", pattern=r"^[0-9]+(ms|s|m)$", description="PodMonitor scrape interval")

    @staticmethod
    def scrape(port: int) -> dict[str, str]:
        """prometheus.io/* annotations (Kubernetes) or labels (compose): where a function's /metrics is."""
        return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}


class DeployValues(Strict):
    """Everything the generators need beyond graph.yaml; every field has a working default."""

    namespace: str = Field("scaigrid", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    image: str = Field("scaigrid:0.1.0", description="the CPU image (deploy/Dockerfile, VARIANT=cpu)")
    gpu_image: str = Field("scaigrid:0.1.0-gpu", description="the GPU image (VARIANT=gpu) for functions with gpu > 0")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    secret: str = Field("scaigrid-secrets", description="Secret holding SCAIGRID_AMQP_URI, _DATABASE_URL, keys")
    grace_seconds: int = Field(20, ge=1, description="SCAIGRID_GRACE_SECONDS: drain time on SIGTERM")
    log_level: str = "INFO"
    keda: bool = Field(True, description="emit KEDA ScaledObjects (needs KEDA 2.x in the cluster)")
    models_claim: str | None = Field(None, description="PersistentVolumeClaim with the models; none: emptyDir")
    gpu_node_selector: dict[str, str] = Field(
        default_factory=lambda: {"nvidia.com/gpu.present": "true"},
        description="labels of GPU nodes (NVIDIA GPU feature discovery sets this one)")
    gpu_tolerations: list[dict[str, str]] = Field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        description="taints GPU node pools carry")
    ingress: IngressValues = Field(default_factory=IngressValues)
    metrics: MetricsValues = Field(default_factory=MetricsValues)
    otel: dict[str, str] = Field(default_factory=dict, description="OTEL_* variables for every function container, "
                                 "e.g. OTEL_EXPORTER_OTLP_ENDPOINT: tracing (docs/observability.md)")
    defaults: FunctionValues = Field(default_factory=FunctionValues)
    functions: dict[str, FunctionValues] = Field(default_factory=dict)

    @field_validator("otel")
    @classmethod
    def _only_otel(cls, value: dict[str, str]) -> dict[str, str]:
        wrong = sorted(k for k in value if not k.startswith("OTEL_"))
        if wrong:  # the function containers' other settings come from their own fields and the Secret
            raise ValueError(f"otel: only OTEL_* variables belong here, not {', '.join(wrong)}")
        return value

    def for_function(self, name: str) -> FunctionValues:
        """`defaults` with `functions[name]` laid over it, nested fields merged one by one."""
        merged = _merge(self.defaults.model_dump(), (self.functions.get(name) or FunctionValues()).model_dump(
            exclude_unset=True))
        return FunctionValues.model_validate(merged)

    def image_for(self, fv: FunctionValues) -> str:
        return self.gpu_image if fv.gpu else self.image


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class ValuesError(Exception):
    """A values file problem, one line per problem."""


def load_values(path: str | Path | None) -> DeployValues:
    """Read a values file (None: the built-in defaults)."""
    if path is None:
        return DeployValues()
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
        return DeployValues.model_validate(data)
    except OSError as exc:
        raise ValuesError(f"{path}: cannot read values file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ValuesError(f"{path}: not valid YAML: {exc}") from None
    except ValidationError as exc:
        raise ValuesError("\n".join(f"{path}: {'.'.join(map(str, e['loc']))}: {e['msg']}"
                                    for e in exc.errors())) from None


def default_values_file(graph_file: Path) -> Path | None:
    """deploy/values.yaml beside the graph (the repository's layout), when there is one."""
    candidate = graph_file.resolve().parent / "deploy" / "values.yaml"
    return candidate if candidate.exists() else None
