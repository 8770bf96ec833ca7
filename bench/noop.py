"""A step that does nothing: what bench/hops.py measures is the cost of getting to it and back."""
from nameko.rpc import rpc


class Noop:
    name = "noop"

    @rpc
    def step(self, envelope):
        return envelope
