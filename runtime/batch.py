"""Batched after-steps: a method marked `@batch(...)` receives a list of envelopes, and the messages are
acknowledged only after it returns (e.g. after its COMMIT). A failure requeues the whole batch.

For bookkeeping that must lose nothing and go fast (the usage ledger): one message at a time through nameko's
worker machinery costs more than the database insert it feeds.
"""
from __future__ import annotations

import logging
import socket
import time

import eventlet
from eventlet.event import Event
from kombu import Connection, Queue
from nameko.constants import AMQP_URI_CONFIG_KEY
from nameko.extensions import Entrypoint

from .logs import log
from .remote import SERIALIZER

_log = logging.getLogger("scaigrid.batch")
BATCH_ATTR = "_scaigrid_batch"


def batch(max_size: int = 500, max_delay: float = 0.05):
    """Mark an after-step method as batched: it gets up to `max_size` envelopes, or what came in `max_delay` s."""
    def decorate(fn):
        setattr(fn, BATCH_ATTR, (max_size, max_delay))
        return fn
    return decorate


class BatchConsumer(Entrypoint):
    """Consumes one durable after-step queue and hands the method whole batches."""

    def __init__(self, queue: Queue, max_size: int, max_delay: float, **kwargs):
        self.queue = queue
        self.max_size = max_size
        self.max_delay = max_delay
        self._stopping = False
        self._thread = None
        super().__init__(**kwargs)

    def start(self):
        self._thread = self.container.spawn_managed_thread(self._run)

    def stop(self):
        self._stopping = True  # the batch in hand is finished and acknowledged first
        if self._thread is not None:
            self._thread.wait()

    def kill(self):
        self._stopping = True
        if self._thread is not None:
            self._thread.kill()

    def _run(self) -> None:
        while not self._stopping:
            try:
                self._consume()
            except Exception as exc:  # broker gone: what was not acknowledged comes back to someone
                if self._stopping:
                    return
                log(_log, logging.WARNING, "batch consumer lost its broker connection; reconnecting", error=str(exc))
                eventlet.sleep(1)

    def _consume(self) -> None:
        buffer: list = []
        first_at = 0.0
        with Connection(self.container.config[AMQP_URI_CONFIG_KEY], heartbeat=15) as conn:
            channel = conn.channel()
            channel.basic_qos(0, self.max_size * 2, False)

            def on_message(body, message):
                buffer.append((body, message))

            with conn.Consumer(self.queue, channel=channel, callbacks=[on_message], accept=[SERIALIZER, "json"]):
                while not self._stopping:
                    wait = 1.0 if not buffer else max(0.0, self.max_delay - (time.monotonic() - first_at))
                    before = len(buffer)
                    try:
                        conn.drain_events(timeout=wait)
                    except socket.timeout:
                        pass
                    conn.heartbeat_check()
                    if before == 0 and buffer:
                        first_at = time.monotonic()
                    full = len(buffer) >= self.max_size
                    if buffer and (full or time.monotonic() - first_at >= self.max_delay):
                        self._handle(buffer)
                        buffer = []

    def _handle(self, items: list) -> None:
        done = Event()

        def handle_result(worker_ctx, result, exc_info):
            done.send((result, exc_info))
            return result, exc_info

        self.container.spawn_worker(self, ([body for body, _ in items],), {}, handle_result=handle_result)
        _, exc_info = done.wait()
        last = items[-1][1]
        if exc_info is None:
            last.channel.basic_ack(last.delivery_tag, multiple=True)  # everything up to the last of this batch
        else:
            log(_log, logging.ERROR, "batch failed; requeued", size=len(items), error=str(exc_info[1])[:300])
            last.channel.basic_nack(last.delivery_tag, multiple=True, requeue=True)
            eventlet.sleep(1)  # do not spin on a batch that keeps failing
