"""Cross-process cache invalidation over Redis pub/sub: every process drops what a change made stale, at once.

A subscriber that was cut off may have missed messages, so each (re)subscription calls `on_connect` (the cache
forgets everything): also when redis-py reconnects and resubscribes by itself inside get_message, which a short
Redis restart does without raising anything.
"""
from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Callable

import eventlet
import redis

from scaigrid.runtime.logs import log

from .health import UNREACHABLE

if TYPE_CHECKING:
    from .health import RedisHealth

_log = logging.getLogger("scaigrid.invalidation")


class _Reconnects:
    """redis-py keeps connect callbacks as weak methods: this object lives as long as its subscription."""

    def __init__(self, on_connect: Callable[[], None]):
        self.on_connect = on_connect

    def fired(self, connection) -> None:
        self.on_connect()


def listen(client: redis.Redis, channel: str, on_message: Callable[[dict], None], on_connect: Callable[[], None],
           running: Callable[[], bool], health: RedisHealth | None = None) -> None:
    """Deliver each JSON message on `channel` to `on_message` until `running()` is false. `on_connect` runs on
    every (re)subscription. With `health`, a lost subscription is reported there (one log line for the process)
    and resubscribed once Redis answers again; without it, logged once per loss."""
    lost = False
    while running():
        if health is not None and not health.up:
            eventlet.sleep(0.2)  # health's probe says when Redis is back: no reconnect storm meanwhile
            continue
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        watcher = _Reconnects(on_connect)
        try:
            pubsub.subscribe(channel)
            pubsub.connection.register_connect_callback(watcher.fired)
            on_connect()
            if lost and health is None:
                log(_log, logging.INFO, "resubscribed", channel=channel)
            lost = False
            while running():
                message = pubsub.get_message(timeout=1.0)
                if message and message["type"] == "message":
                    try:
                        data = json.loads(message["data"])
                    except ValueError:  # not ours: a listener must outlive a stray publish
                        continue
                    on_message(data)
        except redis.RedisError as exc:
            if health is not None and isinstance(exc, UNREACHABLE):
                health.failed(exc)
            elif not lost:
                log(_log, logging.WARNING, "lost the Redis subscription; retrying", channel=channel, error=str(exc))
            lost = True
            eventlet.sleep(1)
        finally:
            if pubsub.connection is not None:  # it goes back to the pool: no clearing on others' reconnects
                pubsub.connection.deregister_connect_callback(watcher.fired)
            pubsub.close()


def publish(client: redis.Redis, channel: str, message: dict) -> None:
    client.publish(channel, json.dumps(message))
