"""Batched after-steps: a method marked `@batch(...)` receives a list of envelopes, and the messages are
acknowledged only after it returns (e.g. after its COMMIT).

A failed batch is one of two things. An OUTAGE (its store is unreachable or failing over): the batch stays
unacknowledged and is retried, with backoff, until the store is back; it is never dead-lettered. A POISON
envelope (anything else: a constraint, a bad value, a bug): the envelopes are retried one by one, and one that fails
again goes to the durable `scaigrid.dead-letter` queue with the error (never dropped; see runtime/dead_letters.py).

For bookkeeping that must lose nothing and go fast (the usage ledger): one message at a time through nameko's
worker machinery costs more than the database insert it feeds.
"""
from __future__ import annotations

import logging
import random
import re
import socket
import time
from typing import Callable

import eventlet
from eventlet.event import Event
from kombu import Connection, Queue
from nameko.constants import AMQP_URI_CONFIG_KEY
from nameko.extensions import Entrypoint
from prometheus_client import Gauge

from .dead_letters import DEAD_LETTER, headers_for
from .logs import bind, current, log
from .remote import SERIALIZER

_log = logging.getLogger("scaigrid.batch")
_STEP_LOGGER = "scaigrid.step"  # runtime/dependencies.py's StepLog
BATCH_ATTR = "_scaigrid_batch"
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.5, 15.0
# A publisher may put several envelopes for a batched step in one message (a list, with this header saying how
# many: runtime/after.py); at most PER_MESSAGE, so that the prefetch, in messages, bounds the envelopes held.
ENVELOPES_HEADER = "scaigrid.envelopes"
PER_MESSAGE = 50
OBSERVE_EVERY_S = 5.0  # passive declares for the depth gauges: cheap, but not on every batch

# Gauges of several replicas on a host are merged by the gateway's /metrics (multiprocess folder): the worst
# replica for what each consumer holds; the latest reading for the dead letters, the same queue for everyone.
QUEUE_DEPTH = Gauge("scaigrid_after_queue_depth", "After-step messages not yet processed: ready in the queue plus "
                    "those this consumer holds", ["queue"], multiprocess_mode="livemax")
OLDEST_AGE = Gauge("scaigrid_after_oldest_age_seconds", "Age of the oldest envelope a consumer holds unprocessed",
                   ["queue"], multiprocess_mode="livemax")
WAITING = Gauge("scaigrid_after_waiting", "1 while a consumer waits for its store to come back", ["queue"],
                multiprocess_mode="livemax")
DEAD_LETTERS = Gauge("scaigrid_dead_letters", "Messages in the dead-letter queue", ["queue"],
                     multiprocess_mode="mostrecent")

# Failure classification --------------------------------------------------------------------------------------
# Errors of the stores' drivers that mean "unreachable or failing over", by module and class name along the class
# hierarchy: the runtime imports none of these drivers.
OUTAGE_CLASSES = {
    "psycopg2": {"OperationalError", "InterfaceError"},  # connection refused or lost, AdminShutdown, recovery mode
    "psycopg2.errors": {"ReadOnlySqlTransaction"},  # a primary that became a standby (SQLSTATE 25006)
    "sqlalchemy.exc": {"OperationalError", "InterfaceError", "DisconnectionError", "TimeoutError"},
    "redis.exceptions": {"ConnectionError", "TimeoutError", "ReadOnlyError", "BusyLoadingError"},
}
STORES = {"psycopg2": "postgres", "redis": "redis", "sqlalchemy": "database"}
# the same, by message, for errors that lost their type on the way (wrapped, re-raised as another class)
OUTAGE_PHRASES = ("server closed the connection unexpectedly", "terminating connection due to administrator",
                  "in a read-only transaction", "connection refused", "could not connect to server",
                  "connection reset by peer", "the database system is", "read only replica")
NETWORK = (ConnectionError, TimeoutError, socket.gaierror, socket.herror)


def _chain(exc: BaseException):
    """The exception and what it wraps: __cause__, __context__, and a DB-API wrapper's `orig`."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen or not isinstance(e, BaseException):
            continue
        seen.add(id(e))
        yield e
        todo += [getattr(e, "orig", None), e.__cause__, e.__context__]


def _driver(e: BaseException) -> str | None:
    return STORES.get(type(e).__module__.split(".")[0])


def _is_outage(e: BaseException) -> bool:
    if isinstance(e, NETWORK) or getattr(e, "connection_invalidated", False):
        return True
    if any(c.__name__ in OUTAGE_CLASSES.get(c.__module__, ()) for c in type(e).__mro__):
        return True
    first = (str(e).splitlines() or [""])[0].lower()
    return any(phrase in first for phrase in OUTAGE_PHRASES)


def store_outage(exc: BaseException) -> str | None:
    """The store an error says is unreachable ("postgres", "redis", "database", "network"), or None when the error
    is something else (the envelope's or the code's fault). The default classifier of `@batch`."""
    links = list(_chain(exc))
    if not any(_is_outage(e) for e in links):
        return None
    drivers = [d for d in map(_driver, links) if d]
    return next((d for d in drivers if d != "database"), drivers[0] if drivers else "network")


def _scrub(text: str) -> str:
    """Without credentials: a URL's user:password@, a DSN's password=."""
    text = re.sub(r"://[^/@\s]*@", "://***@", text)
    return re.sub(r"(?i)(password\s*=\s*)\S+", r"\1***", text)


def first_line(exc: BaseException) -> str:
    """An error's first line for a log, without credentials."""
    return _scrub((str(exc).splitlines() or [""])[0][:300]) or type(exc).__name__


def batch(max_size: int = 500, max_delay: float = 0.05,
          outage: Callable[[BaseException], str | None] = store_outage):
    """Mark an after-step method as batched: it gets up to `max_size` envelopes, or what came in `max_delay` s.

    `outage` tells an error that means "the store is away" (wait and retry the batch; return the store's name) from
    one that is the batch's own (None: find the envelope and dead-letter it). The default knows the drivers of
    PostgreSQL (psycopg2, SQLAlchemy) and Redis, and socket errors.
    """
    def decorate(fn):
        setattr(fn, BATCH_ATTR, (max_size, max_delay, outage))
        return fn
    return decorate


class _Abandon(Exception):
    """Stopping while a store is away: leave the batch unacknowledged (the broker gives it to another consumer)."""


class _QuietOutages(logging.Filter):
    """A batch retried through an outage would log a traceback (nameko) and a step line (StepLog) per retry; its
    consumer says once that it waits, and once that it resumed."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == _STEP_LOGGER:
            return not getattr(current, "batch_outage", False)
        worker_ctx = record.args[0] if isinstance(record.args, tuple) and record.args else None
        consumer = getattr(worker_ctx, "entrypoint", None)
        if isinstance(consumer, BatchConsumer) and record.exc_info and record.exc_info[1] is not None:
            return consumer.outage(record.exc_info[1]) is None
        return True


_QUIET = _QuietOutages()


class BatchConsumer(Entrypoint):
    """Consumes one durable after-step queue and hands the method whole batches."""

    def __init__(self, queue: Queue, max_size: int, max_delay: float,
                 outage: Callable[[BaseException], str | None] = store_outage, **kwargs):
        self.queue = queue
        self.max_size = max_size
        self.max_delay = max_delay
        self.outage = outage
        self._stopping = False
        self._thread = None
        self._conn = None
        self._channel = None
        # messages unacknowledged at most: twice a batch of envelopes when they come PER_MESSAGE to a message
        self.prefetch = max(16, 2 * max_size // PER_MESSAGE)
        self._incoming: list = []  # (envelope, message, since: epoch s, received: monotonic s) not yet in a batch
        self._messages = 0  # the messages those came in
        self._in_hand: list = []  # the batch being processed
        self._observed_at = self._aged_at = 0.0  # monotonic times the gauges were last set
        super().__init__(**kwargs)

    def setup(self):
        for name in ("nameko.containers", _STEP_LOGGER):
            logging.getLogger(name).addFilter(_QUIET)  # one instance: added once per process

    def start(self):
        WAITING.labels(self.queue.name).set(0)
        self._thread = self.container.spawn_managed_thread(self._run)

    def stop(self):
        self._stopping = True  # the batch in hand is finished and acknowledged first (unless its store is away)
        if self._thread is not None:
            self._thread.wait()

    def kill(self):
        self._stopping = True
        if self._thread is not None:
            self._thread.kill()

    def _run(self) -> None:
        try:
            while not self._stopping:
                try:
                    self._consume()
                except Exception as exc:  # broker gone: what was not acknowledged comes back to someone
                    if self._stopping:
                        return
                    log(_log, logging.WARNING, "batch consumer lost its broker connection; reconnecting",
                        queue=self.queue.name, error=first_line(exc))
                    eventlet.sleep(1)
        finally:  # a replica that stopped holds nothing: leave no stale figures behind
            OLDEST_AGE.labels(self.queue.name).set(0)
            WAITING.labels(self.queue.name).set(0)

    def _consume(self) -> None:
        self._incoming, self._in_hand, self._messages = [], [], 0
        with Connection(self.container.config[AMQP_URI_CONFIG_KEY], heartbeat=15) as conn:
            self._conn = conn
            self._channel = channel = conn.channel()
            channel.basic_qos(0, self.prefetch, False)
            self._producer = conn.Producer(channel=conn.channel())

            def on_message(body, message):
                since = message.properties.get("timestamp")  # the publisher's clock, when it sets one
                since = since.timestamp() if hasattr(since, "timestamp") else since or time.time()
                received = time.monotonic()
                # a spool round's envelopes for this step come several to a message (runtime/after.py)
                envelopes = body if (message.headers or {}).get(ENVELOPES_HEADER) and isinstance(body, list) else [body]
                self._incoming.extend((envelope, message, float(since), received) for envelope in envelopes)
                self._messages += 1

            with conn.Consumer(self.queue, channel=channel, callbacks=[on_message], accept=[SERIALIZER, "json"]):
                self._observed_at = self._aged_at = 0.0
                while not self._stopping:
                    buffer = self._incoming
                    wait = 1.0 if not buffer else max(0.0, self.max_delay - (time.monotonic() - buffer[0][3]))
                    try:
                        conn.drain_events(timeout=wait)
                    except socket.timeout:
                        pass
                    conn.heartbeat_check()
                    buffer = self._incoming
                    if buffer and (len(buffer) >= self.max_size or self._messages >= self.prefetch
                                   or time.monotonic() - buffer[0][3] >= self.max_delay):
                        # what arrives while this batch is handled (a wait for its store drains the connection)
                        # starts the next one; holding all the broker will send, waiting longer gains nothing
                        self._incoming, self._messages = [], 0
                        self._handle(buffer)
                    self._observe()

    def _run_batch(self, envelopes: list) -> BaseException | None:
        """Run the method on these envelopes in a worker; the exception it raised, if any."""
        done = Event()

        def handle_result(worker_ctx, result, exc_info):
            # in the worker's greenthread, before StepLog's line of it: an outage is this consumer's to log, once
            bind(batch_outage=bool(exc_info) and self.outage(exc_info[1]) is not None)
            done.send(exc_info)
            return result, exc_info

        self.container.spawn_worker(self, (envelopes,), {}, handle_result=handle_result)
        exc_info = done.wait()
        return exc_info[1] if exc_info else None

    def _handle(self, items: list) -> None:
        self._in_hand = items
        try:
            error = self._attempt([body for body, *_ in items])
            if error is None:
                last = items[-1][1]
                last.channel.basic_ack(last.delivery_tag, multiple=True)  # everything up to the last of this batch
                return
            # one bad envelope must not hold the whole queue: try each alone, and set aside the ones that fail again
            log(_log, logging.ERROR, "batch failed; retrying its envelopes one by one", queue=self.queue.name,
                size=len(items), error=first_line(error))
            for i, (body, message, *_) in enumerate(items):
                error = self._attempt([body])
                if error is not None:
                    self._dead_letter(body, error)
                if i + 1 == len(items) or items[i + 1][1] is not message:  # its message's last envelope
                    message.ack()
        finally:
            self._in_hand = []

    def _attempt(self, envelopes: list) -> BaseException | None:
        """Run a batch; while its store is away, wait and run it again. None, or the error that is not an outage."""
        error = self._run_batch(envelopes)
        store = self.outage(error) if error is not None else None
        if store is None:
            return error
        started = time.monotonic()
        log(_log, logging.WARNING, "store unreachable; holding the batch and retrying until it is back",
            queue=self.queue.name, store=store, error=first_line(error), error_type=type(error).__name__,
            envelopes=len(envelopes))
        WAITING.labels(self.queue.name).set(1)
        delay = BACKOFF_FIRST_S
        try:
            while True:
                self._pause(random.uniform(delay / 2, delay))  # jitter: replicas do not retry in step
                error = self._run_batch(envelopes)
                if error is None or self.outage(error) is None:
                    break
                delay = min(BACKOFF_MAX_S, delay * 2)
        finally:
            WAITING.labels(self.queue.name).set(0)
        log(_log, logging.INFO, "store back; batch resumed", queue=self.queue.name, store=store,
            waited_s=round(time.monotonic() - started, 1), envelopes=len(envelopes),
            held=len(self._in_hand) + len(self._incoming))
        return error

    def _pause(self, seconds: float) -> None:
        """Sleep while keeping the broker connection alive (heartbeats; deliveries go to the next batch)."""
        deadline = time.monotonic() + seconds
        while True:
            if self._stopping:
                raise _Abandon()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                self._conn.drain_events(timeout=min(1.0, left))
            except socket.timeout:
                pass
            self._conn.heartbeat_check()
            self._observe()

    def _observe(self) -> None:
        """The lag gauges, at most once a second (this runs after every delivery): the oldest envelope held, and
        every few seconds the queues' depths."""
        now = time.monotonic()
        if now - self._aged_at < 1.0:
            return
        self._aged_at = now
        # deliveries come oldest first (a redelivery before new ones): the first of each list is the oldest
        oldest = min((held[0][2] for held in (self._in_hand, self._incoming) if held), default=None)
        OLDEST_AGE.labels(self.queue.name).set(0 if oldest is None else max(0.0, time.time() - oldest))
        if now - self._observed_at < OBSERVE_EVERY_S:
            return
        self._observed_at = now
        # on the consumer's own channel: the queue exists (it consumes it); the dead-letter queue is declared
        # outright, as a publish to it would (a passive declare of a missing queue would close the channel)
        ready = self.queue(self._channel).queue_declare(passive=True).message_count
        QUEUE_DEPTH.labels(self.queue.name).set(ready + len(self._in_hand) + len(self._incoming))
        DEAD_LETTERS.labels(DEAD_LETTER.name).set(DEAD_LETTER(self._channel).queue_declare().message_count)

    def _dead_letter(self, body, error: BaseException) -> None:
        """Keep what cannot be processed (it is never dropped): the `scaigrid.dead-letter` queue, with why."""
        request_id = body.get("id") if isinstance(body, dict) else None
        why = _scrub(str(error)[:1000]) or type(error).__name__
        log(_log, logging.ERROR, "envelope dead-lettered", queue=self.queue.name, request_id=request_id,
            error=first_line(error))
        self._producer.publish(body, serializer=SERIALIZER, exchange="", routing_key=DEAD_LETTER.name,
                               declare=[DEAD_LETTER], delivery_mode=2,
                               headers=headers_for(self.queue.name, request_id, why))
