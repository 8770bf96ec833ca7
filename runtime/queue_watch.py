"""The depth of each supervised function's RPC queue (scaigrid_queue_depth), polled by its supervisor: one passive
declare per queue every few seconds, never per call."""
from __future__ import annotations

import threading
from typing import Callable

from kombu import Connection

from .metrics import QUEUE_DEPTH
from .settings import redact_url

POLL_EVERY_S = 5.0


class QueueWatch:
    """A daemon thread reading `rpc-<function>`'s ready messages; says once when the broker is away, once when back."""

    def __init__(self, amqp_uri: str, functions: list[str], say: Callable[..., None], every: float = POLL_EVERY_S):
        self.amqp_uri = amqp_uri
        self.functions = sorted(functions)
        self.say = say
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scaigrid-queue-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        away = False
        while not self._stop.is_set():
            try:
                with Connection(self.amqp_uri, connect_timeout=3, transport_options={"max_retries": 0}) as conn:
                    conn.ensure_connection(max_retries=1)
                    if away:
                        self.say("broker back; queue depths polled again")
                        away = False
                    self._poll(conn)
            except Exception as exc:  # broker away: the gauges keep their last reading until it is back
                if not away:
                    self.say("queue depths not polled: the broker did not answer", level="warning",
                             broker=redact_url(self.amqp_uri), error=str(exc)[:200])
                    away = True
                self._stop.wait(self.every)

    def _poll(self, conn: Connection) -> None:
        channel = conn.channel()
        while not self._stop.is_set():
            for name in self.functions:
                try:
                    _, ready, _ = channel.queue_declare(f"rpc-{name}", passive=True)
                except conn.channel_errors:  # not declared (no RPC entrypoint, or no replica yet): nothing waits
                    channel = conn.channel()
                    ready = 0
                # the first round runs before any replica starts: every series exists before the function serves
                QUEUE_DEPTH.labels(name).set(ready)
            self._stop.wait(self.every)
