"""Handing envelopes to after-steps: through the process's spool (runtime/spool.py) to the broker, as persistent
events with publisher confirms, so that neither a broker restart nor a SIGKILL loses one."""
from __future__ import annotations

import hashlib
import logging
import os
import socket
from pathlib import Path

from nameko.amqp.publish import Publisher

from . import metrics
from .logs import log
from .remote import SERIALIZER
from .service import after_event_type, after_queue
from .spool import Spool, process_spool

_log = logging.getLogger("scaigrid.after")


def spool_folder(root: str, amqp_uri: str) -> Path:
    """One folder per deployment (its broker and vhost) and process name (function-replica, set by the worker): a
    restarted replica finds what its killed predecessor left; two deployments on one host never share."""
    name = os.environ.get("SCAIGRID_SPOOL_NAME") or f"process-{os.getpid()}"
    deployment = hashlib.sha256(amqp_uri.encode()).hexdigest()[:12]
    # the host name too: containers that share one volume (Compose replicas, all "replica 0") stay apart, and a
    # container restarted in place (same name) finds its own folder again
    return Path(root).expanduser() / deployment / socket.gethostname() / name


class AfterSteps:
    """`hand(step, envelope)` before the answer is written; delivery happens in the background."""

    def __init__(self, amqp_uri: str, spool_root: str, max_bytes: int):
        # no retries inside publish: the spool retries, with backoff, without holding anybody up
        self.publisher = Publisher(amqp_uri, serializer=SERIALIZER, use_confirms=True, delivery_mode=2, retry=False)
        self.spool: Spool = process_spool(spool_folder(spool_root, amqp_uri), max_bytes)

    def start(self) -> None:
        self.spool.start(self._publish)

    def stop(self, grace: float) -> None:
        """Deliver what is pending before the process ends; what the broker did not take stays on disk."""
        if not self.spool.drain(grace):
            log(_log, logging.WARNING, "stopping with after-step events not delivered; they stay in the spool "
                "and go out when this replica starts again", pending=self.spool.pending,
                folder=str(self.spool.folder))

    @property
    def full(self) -> bool:
        return self.spool.full

    def hand(self, step: str, envelope: dict) -> None:
        """Spool the event for `step` (its secrets left out); raises only if the local disk fails."""
        self.spool.append(step, {k: v for k, v in envelope.items() if k != "secrets"})

    def _publish(self, step: str, body: dict, at: float) -> None:
        queue = after_queue(step)
        self.publisher.publish(body, exchange=queue.exchange, routing_key=after_event_type(step), declare=[queue],
                               extra_headers={"nameko.request_id": body.get("id")}, timestamp=int(at))
        metrics.AFTER_PUBLISHED.labels(step).inc()
