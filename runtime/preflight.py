"""Store reachability checks: a store that is down gives one clear line naming it and its URL."""
from __future__ import annotations

import socket
from urllib.parse import urlparse

from .settings import Settings, redact_url

DEFAULT_PORTS = {"amqp": 5672, "postgresql": 5432, "redis": 6379}
STORES = {
    "rabbitmq": ("amqp_uri", "SCAIGRID_AMQP_URI"),
    "postgres": ("database_url", "SCAIGRID_DATABASE_URL"),
    "redis": ("redis_url", "SCAIGRID_REDIS_URL"),
}


class StoreDown(Exception):
    """One line: which store, where, and what to do."""


class StartupCheckFailed(SystemExit):
    """A function's own start-up check failed (e.g. a secret key that cannot decrypt what is stored): one line,
    exit EXIT_CONFIG, since restarting will not cure it. A SystemExit because it is raised in an extension's
    greenthread: eventlet's hub prints an Exception's traceback there, but hands a SystemExit to the main one."""


def _check_amqp(url: str) -> None:
    from kombu import Connection

    with Connection(url, connect_timeout=3) as conn:
        conn.ensure_connection(max_retries=1)


def _check_postgres(url: str) -> None:
    import psycopg2

    psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://"), connect_timeout=3).close()


def _check_redis(url: str) -> None:
    import redis

    redis.Redis.from_url(url, socket_connect_timeout=3).ping()


CHECKS = {"rabbitmq": _check_amqp, "postgres": _check_postgres, "redis": _check_redis}


def check_store(store: str, settings: Settings) -> None:
    attr, var = STORES[store]
    url = getattr(settings, attr)
    try:
        CHECKS[store](url)
    except Exception as exc:  # every driver has its own errors; the line is what matters
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StoreDown(f"cannot reach {store} at {redact_url(url)} ({reason}); "
                        f"start it or point {var} at it") from None


def check_stores(stores, settings: Settings) -> None:
    for store in stores:
        check_store(store, settings)


def wait_for_port(url: str, timeout: float) -> bool:
    parsed = urlparse(url)
    port = parsed.port or DEFAULT_PORTS.get(parsed.scheme.split("+")[0], 0)
    try:
        socket.create_connection((parsed.hostname or "127.0.0.1", port), timeout=timeout).close()
        return True
    except OSError:
        return False
