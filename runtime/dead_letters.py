"""The dead-letter queue: what an after-step could not process, kept with why, for an operator to look at and replay.

A dead letter is the original message (body, content type) with headers saying which queue it came from, the
request id, the error and when. Listing never consumes it; a replay puts it back on its own queue once and only
then removes it (a crash between the two replays it twice: after-steps are idempotent on request id).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from kombu import Connection, Queue

from .remote import SERIALIZER

DEAD_LETTER = Queue("scaigrid.dead-letter", durable=True, auto_delete=False)
FROM_QUEUE = "x-scaigrid-queue"
ERROR = "x-scaigrid-error"
REQUEST_ID = "x-scaigrid-request-id"
AT = "x-scaigrid-dead-lettered-at"
REPLAYS = "x-scaigrid-replays"
ACCEPT = [SERIALIZER, "json"]


def headers_for(queue: str, request_id: str | None, error: str) -> dict:
    """The headers a dead letter carries: where it came from, whose it is, why, when."""
    return {FROM_QUEUE: queue, REQUEST_ID: request_id or "", ERROR: error,
            AT: datetime.now(timezone.utc).isoformat(timespec="seconds")}


@dataclass
class DeadLetter:
    """One dead letter as an operator sees it."""

    queue: str | None
    request_id: str | None
    error: str
    at: str | None


@dataclass
class Replayed:
    """What a replay did: how many went back, and how many were kept because their queue is gone."""

    replayed: int = 0
    no_queue: dict[str, int] = field(default_factory=dict)


def describe(message) -> DeadLetter:
    """Queue, request id, error and time of a dead-lettered kombu message (the body is decoded only for the id of
    letters written before the request id had its own header)."""
    headers = message.headers or {}
    request_id = headers.get(REQUEST_ID) or None
    if request_id is None:
        try:
            body = message.decode()
            request_id = body.get("id") if isinstance(body, dict) else None
        except Exception:  # undecodable is still listed: the headers say the rest
            request_id = None
    at = headers.get(AT)
    if at is None and message.properties.get("timestamp"):
        at = str(message.properties["timestamp"])
    return DeadLetter(headers.get(FROM_QUEUE), request_id, str(headers.get(ERROR, "")), at)


def count(conn: Connection) -> int:
    """Messages in the dead-letter queue (declared if absent: it is created by the first dead letter anyway)."""
    return DEAD_LETTER(conn.default_channel).queue_declare().message_count


def _take(conn: Connection, limit: int):
    """Up to `limit` dead letters, unacknowledged on one channel (nobody else gets them meanwhile), and the
    channel; bounded by the count at the start, so letters dead-lettered again meanwhile are not taken twice."""
    channel = conn.channel()
    queue = DEAD_LETTER(channel)
    held = []
    for _ in range(min(limit, queue.queue_declare().message_count)):
        message = queue.get(no_ack=False, accept=ACCEPT)
        if message is None:
            break
        held.append(message)
    return channel, held


def _give_back(conn: Connection, channel, held: list) -> None:
    """Requeue what was taken and not replayed; RabbitMQ puts each back at its place in the queue."""
    try:
        for message in held:
            message.requeue()
        channel.close()
    except (*conn.connection_errors, *conn.channel_errors):
        pass  # a channel that died gave its unacknowledged messages back by itself


def browse(amqp_uri: str, limit: int = 1000) -> tuple[list[DeadLetter], int]:
    """The first `limit` dead letters, and how many there are in all; none is consumed."""
    with Connection(amqp_uri) as conn:
        total = count(conn)
        channel, held = _take(conn, limit)
        try:
            return [describe(m) for m in held], total
        finally:
            _give_back(conn, channel, held)


def _queue_exists(conn: Connection, name: str) -> bool:
    channel = conn.channel()  # a passive declare of a missing queue closes its channel: a channel of its own
    try:
        Queue(name, channel=channel).queue_declare(passive=True)
        return True
    except conn.channel_errors:
        return False
    finally:
        if channel.is_open:
            channel.close()


def replay(amqp_uri: str, request_ids: set[str] | None = None) -> Replayed:
    """Put dead letters back on the queues they came from: all of them (`request_ids` None) or those of these
    request ids. Each is published (with publisher confirms) before it leaves the dead-letter queue."""
    result = Replayed()
    with Connection(amqp_uri, transport_options={"confirm_publish": True}) as conn:
        exists: dict[str, bool] = {}
        producer = conn.Producer(channel=conn.channel())
        channel, held = _take(conn, count(conn))
        try:
            for message in held:
                letter = describe(message)
                if request_ids is not None and letter.request_id not in request_ids:
                    continue
                if letter.queue not in exists:
                    exists[letter.queue] = bool(letter.queue) and _queue_exists(conn, letter.queue)
                if not exists[letter.queue]:
                    result.no_queue[letter.queue or "?"] = result.no_queue.get(letter.queue or "?", 0) + 1
                    continue
                headers = {k: v for k, v in (message.headers or {}).items() if k not in (ERROR, AT)}
                headers[REPLAYS] = int(headers.get(REPLAYS, 0)) + 1
                producer.publish(message.body, exchange="", routing_key=letter.queue, headers=headers,
                                 content_type=message.content_type, content_encoding=message.content_encoding,
                                 delivery_mode=2)
                message.ack()
                result.replayed += 1
        finally:  # what was not replayed goes back where it was, also when this fails half-way
            _give_back(conn, channel, [m for m in held if not m.acknowledged])
    return result
