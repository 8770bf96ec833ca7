"""A stand-in for a client whose calls block the calling thread (as weaviate-client's gRPC calls do), served by
tests/test_offhub.py through scaigrid.runtime.offhub. Runs in the off-hub child: plain Python, no eventlet."""
import os
import sys
import time

from scaigrid.adapters.vector.base import CollectionNotFound, DimensionMismatch


class DemoError(Exception):
    """Defined outside scaigrid: comes back to the parent as a RuntimeError naming it."""


class Blocking:
    def __init__(self, greeting: str = "hello", *, fail: bool = False):
        if fail:
            raise ConnectionRefusedError("the store is down")
        self.greeting = greeting
        print("this print must not corrupt the reply stream")  # stdout is stderr in the child

    def echo(self, value, suffix=""):
        return {"greeting": self.greeting, "value": value, "suffix": suffix}

    def block(self, seconds: float) -> float:
        """Blocks its thread like a C-level gRPC wait; returns when it started (monotonic, this process)."""
        started = time.monotonic()
        time.sleep(seconds)
        return started

    def pid(self) -> int:
        return os.getpid()

    def eventlet_loaded(self) -> bool:
        return "eventlet" in sys.modules

    def fail(self, kind: str):
        if kind == "value":
            raise ValueError("k must be an integer from 1 to 1000")
        if kind == "missing":
            raise CollectionNotFound("docs")
        if kind == "dimensions":
            raise DimensionMismatch("vector has 3 dimensions, the collection 4")
        if kind == "foreign":
            raise DemoError("not one of ours")
        if kind == "exit":
            os._exit(7)
        raise KeyError(kind)

    def unportable(self):
        return object()


class GrpcProbe:
    """A real gRPC call that waits in grpc's C core (as weaviate-client's do): to a port where nothing listens,
    with wait_for_ready, it blocks its thread until the deadline."""

    def __init__(self, address: str):
        import grpc

        self.channel = grpc.insecure_channel(address)

    def wait(self, seconds: float) -> str:
        import grpc

        try:
            self.channel.unary_unary("/scaigrid.Probe/Wait")(b"", timeout=seconds, wait_for_ready=True)
        except grpc.RpcError as exc:
            return exc.code().name
        return "OK"

    def close(self) -> None:
        self.channel.close()
