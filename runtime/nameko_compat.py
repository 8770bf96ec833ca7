"""Where ScaiGrid corrects nameko 2.14 itself, in one place: a nameko upgrade is checked here first
(tests/test_nameko_compat.py pins the behaviour this relies on)."""
from __future__ import annotations

from nameko.messaging import QueueConsumer

_ack, _requeue = QueueConsumer.ack_message, QueueConsumer.requeue_message


def _quietly(settle):
    def settle_unless_gone(self, message):
        """nameko catches amqp's ConnectionError around an ack or requeue, but not the socket's own
        (ConnectionResetError, BrokenPipeError): raised in a managed thread, it kills the whole container, so a
        broker that goes away between a delivery and its ack turned every request in flight into a 500 (the chaos
        suite saw 518). The message is the broker's again anyway once the connection is gone."""
        try:
            settle(self, message)
        except OSError:
            pass

    settle_unless_gone.__name__ = settle.__name__
    return settle_unless_gone


def install() -> None:
    """Idempotent: replicas call it at start (runtime/worker.py)."""
    if getattr(QueueConsumer.ack_message, "__wrapped_by_scaigrid__", False):
        return
    for name, original in (("ack_message", _ack), ("requeue_message", _requeue)):
        patched = _quietly(original)
        patched.__wrapped_by_scaigrid__ = True
        setattr(QueueConsumer, name, patched)
