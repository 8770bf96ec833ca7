"""Process settings from the environment, with working local defaults (see README)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

# exit code of a process that cannot start for a reason restarting will not cure (bad graph, store down)
EXIT_CONFIG = 2
# exit code of a replica that found a store (the broker, PostgreSQL, Redis) down at start: the supervisor gives up
# on a first start (one clear line), but restarts, with backoff, a replica that had been serving
EXIT_STORE_DOWN = 3

METRICS_PORT = 9464  # Prometheus client libraries' customary exporter port

DEFAULTS = {
    "SCAIGRID_AMQP_URI": "amqp://guest:guest@127.0.0.1:5672//",
    "SCAIGRID_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/scaigrid",
    "SCAIGRID_REDIS_URL": "redis://127.0.0.1:6379/0",
    "SCAIGRID_HTTP_ADDRESS": "127.0.0.1:8000",
    # /metrics of a function with no HTTP port, served by its supervisor (`scaigrid run`); containers set 0.0.0.0
    "SCAIGRID_METRICS_ADDRESS": f"127.0.0.1:{METRICS_PORT}",
    "SCAIGRID_MODELS_DIR": str(Path.home() / ".cache" / "scaigrid" / "models"),
    "SCAIGRID_LOG_LEVEL": "INFO",
    "SCAIGRID_GRACE_SECONDS": "20",
    # after-step events not yet confirmed by the broker (runtime/spool.py); a restarted replica resends its own
    "SCAIGRID_SPOOL_DIR": str(Path.home() / ".local" / "state" / "scaigrid" / "spool"),
    "SCAIGRID_SPOOL_MAX_MB": "64",
}
DEFAULT_SPOOL_DIR = DEFAULTS["SCAIGRID_SPOOL_DIR"]
DEFAULT_SPOOL_MAX_BYTES = int(DEFAULTS["SCAIGRID_SPOOL_MAX_MB"]) * 2**20


def env(name: str) -> str:
    return os.environ.get(name) or DEFAULTS[name]


def redact_url(url: str) -> str:
    """URL with its password hidden: URLs appear in error lines and logs, secrets never do."""
    return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


@dataclass(frozen=True)
class Settings:
    amqp_uri: str = field(default_factory=lambda: env("SCAIGRID_AMQP_URI"))
    database_url: str = field(default_factory=lambda: env("SCAIGRID_DATABASE_URL"))
    redis_url: str = field(default_factory=lambda: env("SCAIGRID_REDIS_URL"))
    http_address: str = field(default_factory=lambda: env("SCAIGRID_HTTP_ADDRESS"))
    metrics_address: str = field(default_factory=lambda: env("SCAIGRID_METRICS_ADDRESS"))
    models_dir: str = field(default_factory=lambda: env("SCAIGRID_MODELS_DIR"))
    log_level: str = field(default_factory=lambda: env("SCAIGRID_LOG_LEVEL"))
    grace_seconds: float = field(default_factory=lambda: float(env("SCAIGRID_GRACE_SECONDS")))
    spool_dir: str = field(default_factory=lambda: env("SCAIGRID_SPOOL_DIR"))
    spool_max_bytes: int = field(default_factory=lambda: int(float(env("SCAIGRID_SPOOL_MAX_MB")) * 2**20))
