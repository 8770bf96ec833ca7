"""Cross-process cache invalidation over Redis pub/sub: every process drops what a change made stale, at once."""
from __future__ import annotations

import json
import logging
from typing import Callable

import eventlet
import redis

from scaigrid.runtime.logs import log

_log = logging.getLogger("scaigrid.invalidation")


def listen(client: redis.Redis, channel: str, on_message: Callable[[dict], None], on_connect: Callable[[], None],
           running: Callable[[], bool]) -> None:
    """Deliver each JSON message on `channel` to `on_message` until `running()` is false. `on_connect` runs on
    every (re)subscription: a process that was not listening may have missed news, so it forgets everything."""
    while running():
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(channel)
            on_connect()
            while running():
                message = pubsub.get_message(timeout=1.0)
                if message and message["type"] == "message":
                    on_message(json.loads(message["data"]))
        except redis.RedisError as exc:
            log(_log, logging.WARNING, "lost the Redis subscription; retrying", channel=channel, error=str(exc))
            eventlet.sleep(1)
        finally:
            pubsub.close()


def publish(client: redis.Redis, channel: str, message: dict) -> None:
    client.publish(channel, json.dumps(message))
