"""Batched after-steps: a method marked `@batch(...)` receives a list of envelopes, and the messages are
acknowledged only after it returns (e.g. after its COMMIT). When a batch fails, its envelopes are retried one
by one, and one that fails again goes to the durable `scaigrid.dead-letter` queue with the error (never dropped).

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
DEAD_LETTER = Queue("scaigrid.dead-letter", durable=True, auto_delete=False)


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
            self._producer = conn.Producer(channel=conn.channel())

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

    def _run_batch(self, envelopes: list) -> BaseException | None:
        """Run the method on these envelopes in a worker; the exception it raised, if any."""
        done = Event()

        def handle_result(worker_ctx, result, exc_info):
            done.send(exc_info)
            return result, exc_info

        self.container.spawn_worker(self, (envelopes,), {}, handle_result=handle_result)
        exc_info = done.wait()
        return exc_info[1] if exc_info else None

    def _handle(self, items: list) -> None:
        last = items[-1][1]
        error = self._run_batch([body for body, _ in items])
        if error is None:
            last.channel.basic_ack(last.delivery_tag, multiple=True)  # everything up to the last of this batch
            return
        # one bad envelope must not hold the whole queue: try each alone, and set aside the ones that fail again
        log(_log, logging.ERROR, "batch failed; retrying its envelopes one by one", size=len(items),
            error=str(error)[:300])
        for body, message in items:
            error = self._run_batch([body])
            if error is not None:
                self._dead_letter(body, message, error)
            message.ack()

    def _dead_letter(self, body, message, error: BaseException) -> None:
        """Keep what cannot be processed (it is never dropped): the `scaigrid.dead-letter` queue, with why."""
        log(_log, logging.ERROR, "envelope dead-lettered", queue=self.queue.name,
            request_id=(body or {}).get("id") if isinstance(body, dict) else None, error=str(error)[:300])
        self._producer.publish(body, serializer=SERIALIZER, exchange="", routing_key=DEAD_LETTER.name,
                               declare=[DEAD_LETTER], delivery_mode=2,
                               headers={"x-scaigrid-queue": self.queue.name, "x-scaigrid-error": str(error)[:1000]})
