"""Remote placement: a step as a nameko RPC message, with an expiration equal to the caller's timeout."""
from __future__ import annotations

import uuid

import eventlet
from amqp.exceptions import AMQPError
from kombu.exceptions import KombuError
from nameko.amqp.publish import Publisher, UndeliverableMessage
from nameko.constants import AMQP_URI_CONFIG_KEY
from nameko.exceptions import deserialize
from nameko.rpc import ReplyListener, get_rpc_exchange
from opentelemetry.trace import SpanKind

from . import tracing
from .errors import StepTimeout, Unavailable
from .nameko_compat import forget_reply

SERIALIZER = "msgpack"
QUICK_RETRY = {"max_retries": 1, "interval_start": 0.1, "interval_step": 0.2}


_process_caller: "RemoteCaller | None" = None  # the first Executor's, for inline copies handing calls on


def register_process_caller(caller: "RemoteCaller") -> None:
    global _process_caller
    if _process_caller is None:
        _process_caller = caller


def process_caller() -> "RemoteCaller":
    if _process_caller is None:
        raise RuntimeError("no Executor has started in this process: nothing to call replicas with")
    return _process_caller


class RemoteCaller:
    """Publishes RPC requests through one pooled publisher and waits on a shared reply listener."""

    def __init__(self, config: dict, reply_listener: ReplyListener):
        self.reply_listener = reply_listener
        self.exchange = get_rpc_exchange(config)
        # kombu pools the connection and producer behind this publisher; confirms make a missing queue visible.
        # One quick retry (a pooled connection the broker dropped is replaced), then a clear 503: a caller must
        # not wait out nameko's default of three connection attempts seconds apart while the broker is away.
        self.publisher = Publisher(config[AMQP_URI_CONFIG_KEY], serializer=SERIALIZER, use_confirms=True,
                                   retry_policy=QUICK_RETRY)
        self.publisher.transport_options = {**QUICK_RETRY, "interval_max": 0.5}  # connecting, too

    def call(self, function: str, method: str, args: tuple, timeout: float, headers: dict):
        """Run `function.method(*args)` on a replica and return its result (or raise its error); StepTimeout past
        `timeout`, Unavailable when nothing can take it."""
        if not tracing.on:
            return self._call(function, method, args, timeout, headers)
        with tracing.span(f"{function}.{method}", function, SpanKind.CLIENT,
                          attributes={"rpc.system": "nameko", "rpc.service": function, "rpc.method": method}):
            # the replica's worker gets it as context data, as nameko does with every `nameko.*` header
            return self._call(function, method, args, timeout, {**headers, **tracing.context_headers(tracing.HEADER_PREFIX)})

    def _call(self, function: str, method: str, args: tuple, timeout: float, headers: dict):
        correlation_id = str(uuid.uuid4())
        reply = self.reply_listener.get_reply_event(correlation_id)
        try:
            self.publisher.publish(
                {"args": args, "kwargs": {}},
                exchange=self.exchange,
                routing_key=f"{function}.{method}",
                mandatory=True,
                reply_to=self.reply_listener.routing_key,
                correlation_id=correlation_id,
                extra_headers=headers,
                # a request nobody waits for any more is dropped by the broker instead of being worked on
                expiration=timeout,
            )
        except UndeliverableMessage:
            forget_reply(self.reply_listener, correlation_id)
            raise Unavailable(f"function '{function}' has no running replica; start it "
                              f"(scaigrid run {function}) or check graph.yaml", code="function_unavailable")
        except (OSError, KombuError, AMQPError) as exc:  # the broker is away: say so, nothing was sent
            forget_reply(self.reply_listener, correlation_id)
            raise Unavailable(f"the message bus is unreachable, so step '{function}.{method}' could not be "
                              f"sent ({type(exc).__name__}); retry shortly", code="bus_unavailable") from None
        try:
            with eventlet.Timeout(timeout):
                body = reply.wait()
        except eventlet.Timeout:
            late = StepTimeout(f"step '{function}.{method}' took longer than {timeout:g}s")
            late.late_reply = lambda grace: self._late(correlation_id, reply, grace)
            raise late from None
        error = body.get("error")
        if error:
            raise deserialize(error)
        return body["result"]

    def _late(self, correlation_id: str, reply, grace: float):
        """The result of a call that timed out, if it comes within `grace` seconds (a cancelled step answers with
        what it did so far), else None; either way the reply is forgotten."""
        try:
            with eventlet.Timeout(grace, False):
                body = reply.wait()
                return None if body.get("error") else body.get("result")
            return None
        finally:
            forget_reply(self.reply_listener, correlation_id)
