"""Is Redis there? One answer per process and Redis URL, shared by the key cache, the invalidation listener and
the limiter, so an outage is noticed once, logged once (and once when it ends), and measured.

While Redis is unreachable, calls fail fast (`RedisDown`, without touching the network): under a network partition
every command would otherwise wait out its connect timeout, on every request. A background greenthread pings it
until it answers, then runs the recovery callbacks (forget what may have been missed while cut off).
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import eventlet
import redis
from prometheus_client import Gauge
from redis.backoff import NoBackoff
from redis.retry import Retry

from scaigrid.runtime.logs import log

_log = logging.getLogger("scaigrid.redis")
PROBE_EVERY_S = 0.5
# the lowest value over the live processes: 0 as soon as any replica cannot reach the store
STORE_UP = Gauge("scaigrid_store_up", "1 while this process reaches the store, 0 while it cannot", ["store"],
                 multiprocess_mode="livemin")
# errors that mean "not reachable" (refused, reset, timed out, loading its data after a restart); any other error
# (a script's bug, a wrong type) is a fault and stays one
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)


class RedisDown(redis.ConnectionError):
    """Redis is unreachable (now, or still: the call was not even tried). A redis.ConnectionError, so whoever
    classifies store outages by driver error (the batch consumer) sees it as one."""


class RedisHealth:
    """The reachability of one Redis, for this process."""

    def __init__(self, url: str):
        self.url = url
        self.up = True
        self.down_since_ms = 0  # wall clock: compared with times other processes wrote into Redis
        self.error = ""
        self._recover: list[Callable[[int], None]] = []
        self._probe_client = client_for(url)
        STORE_UP.labels("redis").set(1)

    def on_recover(self, callback: Callable[[int], None]) -> None:
        """`callback(down_since_ms)` runs each time Redis answers again after this process lost it."""
        self._recover.append(callback)

    def call(self, fn: Callable, *args, **kwargs):
        """fn(*args, **kwargs), or RedisDown: at once while Redis is known to be unreachable, or when this call
        finds it so."""
        if not self.up:
            raise RedisDown(f"Redis is unreachable ({self.error})")
        try:
            return fn(*args, **kwargs)
        except RedisDown:
            raise
        except UNREACHABLE as exc:
            self.failed(exc)
            raise RedisDown(f"Redis is unreachable ({exc})") from exc

    def failed(self, exc: BaseException) -> None:
        """Someone found Redis unreachable: log it once, fail fast from now on, probe until it answers."""
        if not self.up:
            return
        self.up = False
        self.down_since_ms = int(time.time() * 1000)
        self.error = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        STORE_UP.labels("redis").set(0)
        log(_log, logging.ERROR, "Redis is unreachable: limits and key caches degrade (docs/accounting.md, "
            "'When Redis goes away') until it answers", error=self.error)
        eventlet.spawn(self._probe)

    def _probe(self) -> None:
        while True:
            eventlet.sleep(PROBE_EVERY_S)
            try:
                self._probe_client.ping()
            except redis.RedisError:  # LOADING while it reads its data back counts as not yet
                continue
            break
        down_for = time.time() - self.down_since_ms / 1000
        self.up = True
        STORE_UP.labels("redis").set(1)
        log(_log, logging.WARNING, "Redis answers again", down_for_s=round(down_for, 1))
        for callback in list(self._recover):
            try:
                callback(self.down_since_ms)
            except Exception as exc:  # one callback's failure must not keep the others from running
                log(_log, logging.ERROR, "recovery step failed", callback=getattr(callback, "__qualname__", ""),
                    error=str(exc)[:200])


_HEALTH: dict[str, RedisHealth] = {}


def health_for(url: str) -> RedisHealth:
    """The process's one RedisHealth for this URL."""
    if url not in _HEALTH:
        _HEALTH[url] = RedisHealth(url)
    return _HEALTH[url]


def client_for(url: str) -> redis.Redis:
    """A client for the hot path: one immediate retry on a connection error (a pooled connection that died with a
    restarted Redis is replaced at once), none on a timeout (it would double the wait), no backoff (a request must
    not sleep through an outage: it fails, and health decides)."""
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=3, health_check_interval=30,
                                retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)))
