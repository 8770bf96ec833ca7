"""Functions a user might write: they live outside the scaigrid package and are wired in by graph.yaml alone."""
import json
import os
import time

import eventlet
from nameko.rpc import rpc

from scaigrid.runtime.dependencies import FunctionConfig
from scaigrid.runtime.envelope import answer
from scaigrid.runtime.errors import Forbidden
from scaigrid.runtime.streams import ChunkSender, StreamClosed


class Tag:
    """Appends '<function>@<pid>' to the envelope's trail: shows which process ran each step."""

    name = "tag"

    @rpc
    def add(self, envelope):
        envelope["context"].setdefault("trail", []).append(f"{self.name}@{os.getpid()}")
        body = envelope["request"].get("body") or {}
        if body.get("sleep"):
            eventlet.sleep(body["sleep"])
        envelope["response"] = {"trail": envelope["context"]["trail"]}
        return envelope


class Shout:
    """Upper-cases the request text."""

    name = "shout"

    @rpc
    def upper(self, envelope):
        body = envelope["request"].get("body") or {}
        envelope["response"] = {"text": str(body.get("text", "")).upper(), "trail": envelope["context"].get("trail")}
        return envelope


class Gate:
    """Ends the route early on request, or refuses it with a typed error."""

    name = "gate"

    @rpc
    def check(self, envelope):
        body = envelope["request"].get("body") or {}
        if body.get("deny"):
            raise Forbidden("the gate refuses this request", code="gate_closed")
        if body.get("stop"):
            return answer(envelope, {"stopped_early": True})
        return envelope


class Slow:
    """Sleeps as long as asked."""

    name = "slow"

    @rpc
    def wait(self, envelope):
        eventlet.sleep((envelope["request"].get("body") or {}).get("seconds", 0))
        envelope["response"] = {"slept": True}
        return envelope


class Ticker:
    """Streams `n` chunks, `interval` seconds apart, each stamped with the time it left."""

    name = "ticker"
    stream = ChunkSender()

    @rpc
    def tick(self, envelope):
        body = envelope["request"].get("body") or {}
        writer = self.stream.open(envelope)
        try:
            for i in range(int(body.get("n", 5))):
                eventlet.sleep(float(body.get("interval", 0.05)))
                writer.send({"i": i, "sent_at": time.time()})
        except StreamClosed:  # the client left: stop, and still account for what was made
            envelope["usage"] = {"chunks": writer.seq, "cancelled": True}
            return writer.finish()
        envelope["usage"] = {"chunks": writer.seq}
        return writer.finish()


class Audit:
    """An after-step: appends the request id to a file (durable event delivery is what is tested)."""

    name = "audit"
    config = FunctionConfig()

    @rpc
    def record(self, envelope):
        with open(self.config["file"], "a") as out:
            error = (envelope.get("error") or {}).get("code")
            out.write(json.dumps({"id": envelope["id"], "error": error, "usage": envelope.get("usage")}) + "\n")


class Ledger(Audit):
    """Like Audit, but declares that it needs Redis: the launcher checks that store before starting it."""

    name = "ledger"
    stores = ("redis",)


class Meter:
    """Pretends to be a model: reports the usage the request asks for (so accounting can be tested exactly)."""

    name = "meter"
    stream = ChunkSender()

    @rpc
    def use(self, envelope):
        body = envelope["request"].get("body") or {}
        if body.get("sleep"):
            eventlet.sleep(body["sleep"])
        completion = int(body.get("completion_tokens", 0))
        writer = self.stream.open(envelope)
        if writer is not None:  # one chunk per "token"; a client that leaves is billed for what was made
            try:
                for i in range(completion):
                    eventlet.sleep(float(body.get("interval", 0.01)))
                    writer.send({"token": i})
            except StreamClosed:
                pass
            completion = writer.seq
            writer.finish()
        envelope["usage"] = {"prompt_tokens": int(body.get("prompt_tokens", 0)), "completion_tokens": completion}
        envelope["response"] = {"ok": True, "usage": envelope["usage"]}
        return envelope


class Parrot:
    """A stand-in chat model: answers "You said: <last user message>" in OpenAI's shapes, streamed word by word,
    and shows what it received, the body and its effective values (so plugins' effects on the request are visible)."""

    name = "parrot"
    stream = ChunkSender()

    @rpc
    def chat(self, envelope):
        body = envelope["request"].get("body") or {}
        user = [m.get("content", "") for m in body.get("messages", []) if m.get("role") == "user"]
        reply = f"You said: {user[-1] if user else ''}"
        writer = self.stream.open(envelope)
        if writer is not None:
            writer.send({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant"}}]})
            for i, word in enumerate(reply.split(" ")):
                writer.send({"object": "chat.completion.chunk",
                             "choices": [{"index": 0, "delta": {"content": word if i == 0 else " " + word}}]})
            writer.finish()
        envelope["response"] = {"object": "chat.completion", "received": body,
                                "received_params": envelope["request"].get("params"), "choices": [
            {"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}]}
        return envelope
