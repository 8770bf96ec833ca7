"""A CPU-bound step for bench/scaling.py: pure-Python work that holds the GIL and never yields to the hub,
so one replica (one process) runs one step at a time and only more replicas add throughput."""
import os

from nameko.rpc import rpc

from scaigrid.runtime.dependencies import FunctionConfig


def burn(iterations: int) -> int:
    """A fixed amount of arithmetic (not a fixed time): under CPU contention it takes longer, as real work does."""
    acc = 0
    for i in range(iterations):
        acc = (acc * 31 + i) % 1000003
    return acc


class Burn:
    name = "burn"
    config = FunctionConfig()

    @rpc
    def step(self, envelope):
        envelope["response"] = {"acc": burn(self.config["iterations"]), "pid": os.getpid()}
        return envelope
