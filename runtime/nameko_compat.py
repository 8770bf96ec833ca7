"""Every use of a nameko 2.14 private API, and where ScaiGrid corrects nameko itself, in one place: a nameko
upgrade is checked here first (tests/test_nameko_compat.py pins each behaviour this relies on, so a change fails
there, loudly, before it breaks a replica)."""
from __future__ import annotations

import logging
import socket
import sys

from nameko.containers import ContainerBeingKilled, WorkerContext
from nameko.messaging import QueueConsumer
from nameko.web.server import WebServer

_nameko_log = logging.getLogger("nameko.containers")  # where nameko's own worker errors are logged


def run_worker(container, entrypoint, args: tuple, kwargs: dict | None = None, data: dict | None = None):
    """Run one worker of `entrypoint` in the calling greenthread (an inline step, an HTTP request) and return what
    its method returned, or raise what it raised once the worker has ended. What ServiceContainer._run_worker does
    in the greenthread spawn_worker makes, the DependencyProviders' worker_setup/result/teardown around the method,
    less its debug bookkeeping: four timing context managers and a call-id stack (a uuid4) built for a debug line
    even when debug is off, 12.8 of its 14 us per worker (a gateway request runs 5-7 workers)."""
    worker_ctx = WorkerContext(container, container.service_cls(), entrypoint, args, kwargs, data=data)
    container._inject_dependencies(worker_ctx)
    container._worker_setup(worker_ctx)
    result = exc_info = None
    try:
        result = getattr(worker_ctx.service, entrypoint.method_name)(*worker_ctx.args, **worker_ctx.kwargs)
    except Exception as exc:  # logged as nameko logs it
        if isinstance(exc, entrypoint.expected_exceptions):
            _nameko_log.warning("(expected) error handling worker %s: %s", worker_ctx, exc, exc_info=True)
        else:
            _nameko_log.exception("error handling worker %s: %s", worker_ctx, exc)
        exc_info = sys.exc_info()
    container._worker_result(worker_ctx, result, exc_info)
    error = exc_info[1] if exc_info is not None else None
    del exc_info  # breaks the frame cycle now rather than at a collection (as nameko does)
    container._worker_teardown(worker_ctx)
    if error is not None:
        raise error
    return result


def refuse_if_killed(container) -> None:
    """Raise as spawn_worker does for a worker asked of a container that is being killed."""
    if container._being_killed:
        raise ContainerBeingKilled()


def wait_for_workers(container) -> None:
    """Until every worker the container spawned has ended (its private worker pool)."""
    container._worker_pool.waitall()


def stop_accepting(server: WebServer) -> None:
    """Close a web server's listening socket now, keeping the connections it has (nameko's own stop waits for
    every keep-alive connection, so a draining replica would keep taking requests)."""
    if server._sock is None:
        return
    server._is_accepting = False
    server._gt.kill()
    server._sock.close()


def forget_reply(reply_listener, correlation_id: str) -> None:
    """Drop the reply event of a call nobody waits for any more (the listener keeps one per correlation id until a
    reply comes, which for a message that was never sent or timed out is never)."""
    reply_listener._reply_events.pop(correlation_id, None)

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


_process_request = WebServer.process_request


def _without_nagle(self, sock, address):
    """nameko's web server leaves Nagle's algorithm on (uvicorn and asyncio servers turn it off): a stream's chunks
    are small writes, and on a kept-alive connection each one after the first waited for the client's delayed ACK,
    ~40 ms ([DONE] +47 ms in bench/gateway.py once it read streams to their end as SDK clients do; a fresh
    connection hid it, Linux acknowledging at once while a connection is young)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:  # the client is gone already: the request fails as it would have
        pass
    return _process_request(self, sock, address)


def install() -> None:
    """Idempotent: replicas call it at start (runtime/worker.py)."""
    if getattr(QueueConsumer.ack_message, "__wrapped_by_scaigrid__", False):
        return
    for name, original in (("ack_message", _ack), ("requeue_message", _requeue)):
        patched = _quietly(original)
        patched.__wrapped_by_scaigrid__ = True
        setattr(QueueConsumer, name, patched)
    WebServer.process_request = _without_nagle
