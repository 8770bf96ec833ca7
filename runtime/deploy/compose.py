"""`scaigrid deploy compose`: a Docker Compose file from graph.yaml, the stores included.

Every function is a service running the one image as `scaigrid run NAME --replicas 1`, with `deploy.replicas`
from the graph: a replica is a container, as on Kubernetes; the ingress (the gateway) is one container running its
replicas as processes on one published port. Passwords come from `.env` through `${VAR:?}`
interpolation (Compose refuses to start while one is missing); none is written into the file. SCAIGRID_SECRET_KEY,
which the functions on every host must share (adapters/secrets.py), is required the same way.
"""
from __future__ import annotations

from .topology import (GRAPH_DIR, MAKE_SECRET_KEY, MODELS_DIR, SECRET_KEY, SPOOL_DIR, Topology, Unit,
                       container_settings)
from .values import DeployValues

# Versions from the product's platform components (PostgreSQL 16, Redis 7, RabbitMQ 3.13, Weaviate 1.30 (weaviate-client 4.24 needs >= 1.27), Neo4j 5.19)
IMAGES = {
    "postgres": "pgvector/pgvector:0.7.4-pg16",
    "redis": "redis:7.2-bookworm",
    "rabbitmq": "rabbitmq:3.13-management",
    "weaviate": "cr.weaviate.io/semitechnologies/weaviate:1.30.0",
    "neo4j": "neo4j:5.19-community",
}
PASSWORDS = ["POSTGRES_PASSWORD", "REDIS_PASSWORD", "RABBITMQ_PASSWORD", "WEAVIATE_API_KEY", "NEO4J_PASSWORD"]


def need(var: str) -> str:
    """Compose interpolation that stops `docker compose up` with a message when .env lacks the variable."""
    return f"${{{var}:?set {var} in .env (see .env.example)}}"


def _health(test: list[str], start: str = "10s") -> dict:
    return {"test": test, "interval": "10s", "timeout": "5s", "retries": 10, "start_period": start}


def store_services() -> dict:
    """PostgreSQL + pgvector, Redis, RabbitMQ, Weaviate, Neo4j: each with a volume and a health check."""
    return {
        "postgres": {
            "image": IMAGES["postgres"],
            "environment": {"POSTGRES_USER": "scaigrid", "POSTGRES_DB": "scaigrid",
                            "POSTGRES_PASSWORD": need("POSTGRES_PASSWORD")},
            "volumes": ["postgres:/var/lib/postgresql/data"],
            "healthcheck": _health(["CMD-SHELL", "pg_isready -U scaigrid -d scaigrid"]),
            "restart": "unless-stopped",
        },
        "redis": {
            "image": IMAGES["redis"],
            "environment": {"REDIS_PASSWORD": need("REDIS_PASSWORD")},
            # through the shell, so the password stays out of the container's command line and `docker inspect`
            "command": ["sh", "-c", 'exec redis-server --requirepass "$$REDIS_PASSWORD" --appendonly yes'],
            "volumes": ["redis:/data"],
            "healthcheck": _health(["CMD-SHELL", 'redis-cli --no-auth-warning -a "$$REDIS_PASSWORD" ping | grep -q PONG']),
            "restart": "unless-stopped",
        },
        "rabbitmq": {
            "image": IMAGES["rabbitmq"],
            "environment": {"RABBITMQ_DEFAULT_USER": "scaigrid", "RABBITMQ_DEFAULT_PASS": need("RABBITMQ_PASSWORD"),
                            "RABBITMQ_DEFAULT_VHOST": "scaigrid"},
            "volumes": ["rabbitmq:/var/lib/rabbitmq"],
            "healthcheck": _health(["CMD", "rabbitmq-diagnostics", "-q", "check_port_connectivity"], "30s"),
            "restart": "unless-stopped",
        },
        "weaviate": {
            "image": IMAGES["weaviate"],
            "environment": {
                "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED": "false",
                "AUTHENTICATION_APIKEY_ENABLED": "true",
                "AUTHENTICATION_APIKEY_ALLOWED_KEYS": need("WEAVIATE_API_KEY"),
                "AUTHENTICATION_APIKEY_USERS": "scaigrid",
                "PERSISTENCE_DATA_PATH": "/var/lib/weaviate",
                "DEFAULT_VECTORIZER_MODULE": "none",  # ScaiGrid embeds with its own models
                "CLUSTER_HOSTNAME": "node1",
            },
            "volumes": ["weaviate:/var/lib/weaviate"],
            "healthcheck": _health(["CMD-SHELL", "wget -q --spider http://localhost:8080/v1/.well-known/ready"]),
            "restart": "unless-stopped",
        },
        "neo4j": {
            "image": IMAGES["neo4j"],
            "environment": {"NEO4J_AUTH": f"neo4j/{need('NEO4J_PASSWORD')}",
                            "NEO4J_PASSWORD": need("NEO4J_PASSWORD")},
            "volumes": ["neo4j:/data"],
            "healthcheck": _health(["CMD-SHELL", "cypher-shell -u neo4j -p \"$$NEO4J_PASSWORD\" 'RETURN 1'"], "30s"),
            "restart": "unless-stopped",
        },
    }


def function_env(values: DeployValues) -> dict:
    """What every function container gets: store URLs (passwords interpolated from .env) and settings."""
    return {
        "SCAIGRID_AMQP_URI": f"amqp://scaigrid:{need('RABBITMQ_PASSWORD')}@rabbitmq:5672/scaigrid",
        "SCAIGRID_DATABASE_URL": f"postgresql://scaigrid:{need('POSTGRES_PASSWORD')}@postgres:5432/scaigrid",
        "SCAIGRID_REDIS_URL": f"redis://:{need('REDIS_PASSWORD')}@redis:6379/0",
        "SCAIGRID_WEAVIATE_URL": "http://weaviate:8080?grpc_port=50051",
        "SCAIGRID_WEAVIATE_API_KEY": need("WEAVIATE_API_KEY"),
        "SCAIGRID_NEO4J_URL": "bolt://neo4j:7687",
        "SCAIGRID_NEO4J_USER": "neo4j",
        "SCAIGRID_NEO4J_PASSWORD": need("NEO4J_PASSWORD"),
        **container_settings(values),
    }


def _image(values: DeployValues, gpu: bool) -> str:
    var, default = ("SCAIGRID_GPU_IMAGE", values.gpu_image) if gpu else ("SCAIGRID_IMAGE", values.image)
    return f"${{{var}:-{default}}}"


def _depends(stores: tuple[str, ...], migrate: bool) -> dict:
    deps = {s: {"condition": "service_healthy"} for s in stores if s in IMAGES}
    if migrate:
        deps["migrate"] = {"condition": "service_completed_successfully"}
    return deps


def function_service(unit: Unit, values: DeployValues, migrate: bool) -> dict:
    """One function: N containers of one replica each; health from the image's HEALTHCHECK (heartbeats)."""
    svc: dict = {
        "image": _image(values, bool(unit.values.gpu)),
        # the ingress: one container of N processes sharing its port (SO_REUSEPORT), since Docker cannot publish
        # one host port from several containers; every other function: N containers of one process
        "command": ["run", unit.name, "--replicas", str(unit.replicas if unit.ingress else 1)],
        "env_file": [".env"],  # the ${VAR}s graph.yaml's configs use (upstream keys) come from here
        # required, not left to env_file: a container without it would make a key of its own, unlike the others'
        "environment": {**function_env(values), SECRET_KEY: need(SECRET_KEY), "SCAIGRID_SPOOL_DIR": SPOOL_DIR},
        # the spool: after-step events the broker has not confirmed, kept across restarts (one folder per container)
        "volumes": [f"${{SCAIGRID_GRAPH_FILE:-./graph.yaml}}:{GRAPH_DIR}/graph.yaml:ro", f"spool:{SPOOL_DIR}"],
        "depends_on": _depends(unit.stores, migrate and "postgres" in unit.stores),
        "restart": "unless-stopped",
        "stop_grace_period": f"{values.grace_seconds + 15}s",
        "deploy": {"replicas": 1 if unit.ingress else unit.replicas},
    }
    if unit.ingress:  # its /metrics is on this port: the container's processes
        svc["ports"] = [f"${{SCAIGRID_PORT:-8000}}:{unit.port}"]
    else:  # its supervisor serves /metrics on the compose network (no host port: Prometheus runs beside it)
        svc["expose"] = [str(values.metrics.port)]
        svc["environment"]["SCAIGRID_METRICS_ADDRESS"] = f"0.0.0.0:{values.metrics.port}"
    # for Prometheus's docker_sd_configs relabelling (docs/observability.md)
    svc["labels"] = values.metrics.scrape(unit.port if unit.ingress else values.metrics.port)
    if unit.values.models:
        svc["volumes"].append(f"models:{MODELS_DIR}")
    if unit.values.gpu:
        svc["deploy"]["resources"] = {"reservations": {"devices": [
            {"driver": "nvidia", "count": unit.values.gpu, "capabilities": ["gpu"]}]}}
    return svc


def compose(topology: Topology, values: DeployValues) -> dict:
    """The whole compose file: stores, the one-shot migration, then every function (sorted by name)."""
    services = store_services()
    migrate = "postgres" in topology.stores
    if migrate:
        services["migrate"] = {
            "image": _image(values, False),
            "command": ["db", "upgrade"],
            "environment": function_env(values),
            "volumes": [f"${{SCAIGRID_GRAPH_FILE:-./graph.yaml}}:{GRAPH_DIR}/graph.yaml:ro"],
            "depends_on": {"postgres": {"condition": "service_healthy"}},
            "healthcheck": {"disable": True},  # a one-shot writes no heartbeats
            "restart": "no",
        }
    for unit in topology.units:
        if unit.name in services:
            raise ValueError(f"function '{unit.name}' has the name of a store service; rename it in graph.yaml")
        services[unit.name] = function_service(unit, values, migrate)
    volumes = ["postgres", "redis", "rabbitmq", "weaviate", "neo4j", "spool"]
    if any(u.values.models for u in topology.units):
        volumes.append("models")
    return {"name": "scaigrid", "services": services, "volumes": {v: {} for v in volumes}}


def env_example(topology: Topology) -> str:
    """.env for the compose file: the store passwords and the ${VAR}s graph.yaml uses."""
    lines = ["# cp .env.example .env, then set every value (URL-safe, e.g. `openssl rand -hex 24`)"]
    lines += [f"{var}=" for var in PASSWORDS]
    lines += ["# encrypts stored secrets (webhook keys); the same on every host: back it up with the database.",
              f"# make one: {MAKE_SECRET_KEY}",
              "# rotate: NEW,OLD (the first encrypts, all decrypt)",
              f"{SECRET_KEY}="]
    if topology.env_refs:
        lines.append("# used by graph.yaml's function configs")
        lines += [f"{var}=" for var in topology.env_refs]
    lines.append("# optional: SCAIGRID_IMAGE, SCAIGRID_GPU_IMAGE, SCAIGRID_PORT, SCAIGRID_GRAPH_FILE")
    return "\n".join(lines) + "\n"
