"""Handing envelopes to after-steps: through the process's spool (runtime/spool.py) to the broker, as persistent
events with publisher confirms, so that neither a broker restart nor a SIGKILL loses one.

A spool round goes out on one connection of this process's own: every message of the round is published, then the
broker's confirms are awaited once. Envelopes for a batched after-step (`@batch`, runtime/batch.py: the usage
ledger) travel several to a message (header `scaigrid.envelopes`), which its BatchConsumer takes apart; any other
after-step (a nameko event handler) gets one message per envelope, with the trace it belongs to in its
`nameko.traceparent` header."""
from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from pathlib import Path

from kombu import Connection
from kombu.serialization import dumps

from . import metrics, tracing
from .batch import ENVELOPES_HEADER, PER_MESSAGE
from .logs import log
from .remote import SERIALIZER
from .service import after_event_type, after_queue
from .spool import Spool, process_spool
from .tracing import TRACEPARENT

_log = logging.getLogger("scaigrid.after")
CONFIRM_TIMEOUT_S = 10.0  # a broker that takes the bytes but never confirms (a half-open connection) is "away"


def spool_folder(root: str, amqp_uri: str) -> Path:
    """One folder per deployment (its broker and vhost) and process name (function-replica, set by the worker): a
    restarted replica finds what its killed predecessor left; two deployments on one host never share."""
    name = os.environ.get("SCAIGRID_SPOOL_NAME") or f"process-{os.getpid()}"
    deployment = hashlib.sha256(amqp_uri.encode()).hexdigest()[:12]
    # the host name too: containers that share one volume (Compose replicas, all "replica 0") stay apart, and a
    # container restarted in place (same name) finds its own folder again
    return Path(root).expanduser() / deployment / socket.gethostname() / name


class BrokerRefused(ConnectionError):
    """The broker nacked a message (its own trouble: a full disk, a queue process down): retry, as for an outage."""


class ConfirmedRounds:
    """Publishes a list of messages and returns once the broker confirmed all of them (or raises)."""

    def __init__(self, amqp_uri: str):
        self.amqp_uri = amqp_uri
        self._conn = None

    def _open(self):
        conn = Connection(self.amqp_uri, connect_timeout=5)
        channel = conn.channel()
        channel.confirm_select()  # acks arrive as events; publishing does not wait for each
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)
        self._conn, self._channel, self._declared = conn, channel, set()
        self._sent = 0  # in confirm mode the broker numbers a channel's publishes 1, 2, ...
        self._unconfirmed: set[int] = set()
        self._nacked = False

    def _on_ack(self, tag: int, multiple: bool) -> None:
        if multiple:  # everything up to and including `tag`
            self._unconfirmed = {t for t in self._unconfirmed if t > tag}
        else:
            self._unconfirmed.discard(tag)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self._nacked = True
        self._on_ack(tag, multiple)

    def publish(self, messages: list[tuple[str, object, dict, float]]) -> None:
        """`messages`: (step, body, headers, at) each. Raises unless every one is confirmed."""
        try:
            if self._conn is None:
                self._open()
            channel = self._channel
            for step, body, headers, at in messages:
                queue = after_queue(step)
                if step not in self._declared:  # once per connection, as kombu's maybe_declare would
                    queue(channel).declare()
                    self._declared.add(step)
                content_type, encoding, data = dumps(body, serializer=SERIALIZER)
                message = channel.prepare_message(data, 0, content_type, encoding, headers,
                                                  {"delivery_mode": 2, "timestamp": int(at)})
                channel.basic_publish(message, exchange=queue.exchange.name, routing_key=after_event_type(step))
                self._sent += 1
                self._unconfirmed.add(self._sent)
            deadline = time.monotonic() + CONFIRM_TIMEOUT_S
            while self._unconfirmed:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"the broker left {len(self._unconfirmed)} of {len(messages)} messages "
                                       f"unconfirmed for {CONFIRM_TIMEOUT_S:g}s")
                self._conn.drain_events(timeout=left)
            if self._nacked:
                raise BrokerRefused("the broker nacked an after-step event")
        except Exception:
            self.close()  # the next round starts on a fresh connection and sends all of this one again
            raise

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.release()
            except Exception:  # noqa: BLE001 -- a connection already broken has nothing to release
                pass


def messages_of(records: list[dict], batched: frozenset[str]) -> list[tuple[str, object, dict, float]]:
    """A round's records as messages: runs of one batched step's envelopes share a message (PER_MESSAGE at most,
    its timestamp the oldest); the rest go one to a message."""
    out: list = []
    for record in records:
        step, body, at = record["step"], record["body"], record["at"]
        last = out[-1] if out else None
        if step in batched:
            if last is not None and last[0] == step and len(last[1]) < PER_MESSAGE:  # the same step: a list too
                last[1].append(body)
                last[2][ENVELOPES_HEADER] += 1
                continue
            out.append((step, [body], {ENVELOPES_HEADER: 1}, at))
        else:
            headers = {"nameko.request_id": body.get("id")}
            if body.get(TRACEPARENT):  # the consumer's worker continues the request's trace (runtime/tracing.py)
                headers[tracing.HEADER_PREFIX + TRACEPARENT] = body[TRACEPARENT]
            out.append((step, body, headers, at))
    return out


class AfterSteps:
    """`hand(step, envelope)` before the answer is written; delivery happens in the background. `batched`: the
    steps whose consumers take several envelopes to a message."""

    def __init__(self, amqp_uri: str, spool_root: str, max_bytes: int, batched: frozenset[str] = frozenset()):
        self.rounds = ConfirmedRounds(amqp_uri)
        self.batched = batched
        self.spool: Spool = process_spool(spool_folder(spool_root, amqp_uri), max_bytes)

    def start(self) -> None:
        self.spool.start(self._publish)

    def stop(self, grace: float) -> None:
        """Deliver what is pending before the process ends; what the broker did not take stays on disk."""
        if not self.spool.drain(grace):
            log(_log, logging.WARNING, "stopping with after-step events not delivered; they stay in the spool "
                "and go out when this replica starts again", pending=self.spool.pending,
                folder=str(self.spool.folder))
        self.rounds.close()

    @property
    def full(self) -> bool:
        return self.spool.full

    def hand(self, step: str, envelope: dict) -> None:
        """Spool the event for `step` (its secrets left out); raises only if the local disk fails. While tracing is
        on, the envelope carries the trace it was handed in: a batched message holds envelopes of many requests."""
        body = {k: v for k, v in envelope.items() if k != "secrets"}
        if tracing.on:
            body[TRACEPARENT] = tracing.traceparent()
        self.spool.append(step, body)

    def _publish(self, records: list[dict]) -> None:
        self.rounds.publish(messages_of(records, self.batched))
        for record in records:
            metrics.AFTER_PUBLISHED.labels(record["step"]).inc()
