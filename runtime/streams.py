"""Token streams over RabbitMQ: a step publishes chunks straight to the gateway process that holds the client.

Gateway side: `ChunkListener` owns one exclusive, auto-delete queue per process and routes chunks by request id.
Step side: `ChunkSender` publishes chunks (mandatory, so a dead gateway stops the work) and hears cancellations
on a fanout. Chunk order holds because one publisher channel feeds one queue. A step hosted inline in the gateway's
own process hands its chunks to the listener in memory: no broker round trip (and no confirm) per chunk.
"""
from __future__ import annotations

import logging
import socket
import time
import uuid

import eventlet
from cachetools import TTLCache
from eventlet.event import Event
from eventlet.queue import LightQueue
from kombu import Connection, Exchange, Queue
from nameko.amqp.publish import Publisher, UndeliverableMessage
from nameko.constants import AMQP_URI_CONFIG_KEY
from nameko.extensions import DependencyProvider

from nameko.exceptions import deserialize_to_instance

from . import tracing
from .errors import StepError
from .logs import log
from .metrics import STREAMS_OPEN
from .remote import SERIALIZER

_log = logging.getLogger("scaigrid.streams")
CANCEL_EXCHANGE = Exchange("scaigrid.cancel", type="fanout", durable=True)
CANCEL_MEMORY_S = 300  # how long a cancelled request id is remembered
CANCEL_MEMORY = 100_000  # and how many at most
YIELD_EVERY = 8  # chunks an inline producer sends between two turns it gives the hub (chunk 0 always gets one)
# this process's chunk listeners by queue name (one per gateway container): an inline step's chunks go straight there
LOCAL_LISTENERS: dict[str, "ChunkListener"] = {}


@deserialize_to_instance
class StreamClosed(StepError):
    """The client went away (cancel) or its gateway is gone: stop generating."""

    status, code = 499, "stream_closed"


def _consume_forever(amqp_uri: str, queue: Queue, on_message, ready: Event | None, stopped) -> None:
    """Consume `queue` with a heartbeat checked every second (else the broker drops us and the queue)."""
    while not stopped():
        try:
            with Connection(amqp_uri, heartbeat=15) as conn:
                with conn.Consumer(queue, callbacks=[on_message], accept=[SERIALIZER], no_ack=True):
                    if ready is not None and not ready.ready():
                        ready.send(True)
                    while not stopped():
                        try:
                            conn.drain_events(timeout=1)
                        except socket.timeout:
                            pass
                        conn.heartbeat_check()
        except Exception as exc:  # broker restart: reconnect, re-declare
            if stopped():
                return
            log(_log, logging.WARNING, "chunk consumer lost its broker connection; reconnecting", error=str(exc))
            eventlet.sleep(1)


class ChunkListener(DependencyProvider):
    """Gateway side: one chunk queue per process; `open(request_id)` gives the queue a request's chunks land in."""

    def setup(self):
        self.queue_name = f"scaigrid.chunks.{uuid.uuid4().hex}"
        self.streams: dict[str, LightQueue] = {}
        self._ready = Event()
        self._stopped = False
        self._cancel = Publisher(self.container.config[AMQP_URI_CONFIG_KEY], serializer=SERIALIZER,
                                 declare=[CANCEL_EXCHANGE])

    def start(self):
        queue = Queue(self.queue_name, exclusive=True, auto_delete=True, durable=False)
        amqp_uri = self.container.config[AMQP_URI_CONFIG_KEY]
        self.container.spawn_managed_thread(
            lambda: _consume_forever(amqp_uri, queue, lambda body, message: self.deliver(body), self._ready,
                                     lambda: self._stopped))
        with eventlet.Timeout(10):
            self._ready.wait()
        LOCAL_LISTENERS[self.queue_name] = self

    def stop(self):
        self._stopped = True
        LOCAL_LISTENERS.pop(self.queue_name, None)

    def get_dependency(self, worker_ctx):
        if not self._ready.ready():  # extensions start concurrently: no stream before the chunk queue exists
            self._ready.wait()
        return self

    def deliver(self, body: dict) -> None:
        """A chunk, from the broker or from a step inline in this process; one for a stream that is closed already
        (its client left) is dropped."""
        queue = self.streams.get(body.get("rid"))
        if queue is not None:
            queue.put(("chunk", body))

    def open(self, request_id: str) -> LightQueue:
        """Register before the route starts: chunk 0 can arrive before any RPC reply."""
        queue = LightQueue()
        if request_id not in self.streams:
            STREAMS_OPEN.labels(self.container.service_name).inc()
        self.streams[request_id] = queue
        return queue

    def close(self, request_id: str) -> None:
        if self.streams.pop(request_id, None) is not None:
            STREAMS_OPEN.labels(self.container.service_name).dec()

    def cancel(self, request_id: str) -> None:
        """Tell whichever replica generates this request to stop."""
        self._cancel.publish({"rid": request_id}, exchange=CANCEL_EXCHANGE, routing_key="")


def with_answer_fields(answer: dict, envelope: dict) -> dict:
    """Top-level fields that earlier steps asked to add to the answer (`context.answer_fields`, e.g. citations): on
    a plain answer, and on the first chunk of a stream, so a client has them before the text they qualify."""
    fields = envelope.get("context", {}).get("answer_fields")
    return {**answer, **fields} if fields else answer


class StreamWriter:
    """What a step uses to stream: `send(data)` per chunk, `finish()` once; `cancelled` to check between chunks."""

    def __init__(self, sender: "ChunkSender", envelope: dict):
        self._sender = sender
        self._envelope = envelope
        self._reply_to = envelope["context"]["stream"]["reply_to"]
        self.request_id = envelope["id"]
        self.seq = 0
        # the span that makes the chunks, named on each one that crosses the broker; nothing while tracing is off
        self._headers = tracing.context_headers() if tracing.on else {}

    @property
    def cancelled(self) -> bool:
        return self._sender.is_cancelled(self.request_id)

    def send(self, data) -> None:
        """Publish one chunk now; raises StreamClosed when the client or its gateway is gone."""
        if self.cancelled:
            raise StreamClosed(f"stream {self.request_id} was cancelled by its client")
        if self.seq == 0 and isinstance(data, dict):
            data = with_answer_fields(data, self._envelope)
        chunk = {"rid": self.request_id, "seq": self.seq, "data": data}
        local = LOCAL_LISTENERS.get(self._reply_to)
        if local is not None:  # inline in the gateway that holds the client
            local.deliver(chunk)
        else:
            try:
                self._sender.publisher.publish(chunk, exchange="", routing_key=self._reply_to, mandatory=True,
                                               extra_headers=self._headers)
            except UndeliverableMessage:
                raise StreamClosed(f"the gateway holding stream {self.request_id} is gone") from None
        if _log.isEnabledFor(logging.DEBUG):  # the step's own clock: tests prove chunks leave as they are made
            log(_log, logging.DEBUG, "chunk sent", seq=self.seq, at=time.time())
        self.seq += 1
        # chunk 0 goes out at once: this turn lets its reader write it. Later ones gather while the producer goes
        # on and the gateway writes what has gathered in one send (at 32 concurrent streams 5.3 chunks a write,
        # streams/s +10-30 %); a turn every YIELD_EVERY chunks keeps a burst from holding the hub
        if self.seq == 1 or self.seq % YIELD_EVERY == 0:
            eventlet.sleep(0)

    def finish(self) -> dict:
        """Record how many chunks went out, so the gateway knows when it has them all."""
        self._envelope["context"]["stream"]["sent"] = self.seq
        return self._envelope


class ChunkSender(DependencyProvider):
    """Step side: `self.stream.open(envelope)` -> a StreamWriter, or None when the request is not streamed."""

    def setup(self):
        amqp_uri = self.container.config[AMQP_URI_CONFIG_KEY]
        self.publisher = Publisher(amqp_uri, serializer=SERIALIZER, use_confirms=True)
        # bounded both ways: a flood of cancels costs at most CANCEL_MEMORY entries, each kept CANCEL_MEMORY_S
        self.cancelled = TTLCache(CANCEL_MEMORY, CANCEL_MEMORY_S)
        self._stopped = False
        self._queue = Queue(f"scaigrid.cancel.{uuid.uuid4().hex}", exchange=CANCEL_EXCHANGE, exclusive=True,
                            auto_delete=True, durable=False)

    def start(self):
        amqp_uri = self.container.config[AMQP_URI_CONFIG_KEY]
        ready = Event()
        self.container.spawn_managed_thread(
            lambda: _consume_forever(amqp_uri, self._queue, self._on_cancel, ready, lambda: self._stopped))
        with eventlet.Timeout(10):
            ready.wait()

    def stop(self):
        self._stopped = True

    def _on_cancel(self, body, message):
        rid = body.get("rid") if isinstance(body, dict) else None
        if isinstance(rid, str):
            self.cancelled[rid] = True

    def is_cancelled(self, request_id: str) -> bool:
        """Whether the request's caller gave up (hung up, timed out): work for it should stop now."""
        return request_id in self.cancelled

    def get_dependency(self, worker_ctx):
        return self

    def open(self, envelope: dict) -> StreamWriter | None:
        stream = envelope.get("context", {}).get("stream")
        return StreamWriter(self, envelope) if stream else None
