"""Process lifecycle: requests in flight and draining, so SIGTERM finishes work instead of cutting it."""
from __future__ import annotations

import time
from contextlib import contextmanager

import eventlet


class InFlight:
    """Counts requests (and streams) being served by this process; refuses new ones while draining."""

    def __init__(self):
        self.count = 0
        self.draining = False

    def enter(self) -> None:
        self.count += 1

    def leave(self) -> None:
        self.count -= 1

    @contextmanager
    def track(self):
        self.enter()
        try:
            yield
        finally:
            self.leave()

    def drain(self, grace: float) -> bool:
        """Refuse new work, wait up to `grace` seconds for the work in flight; True if all of it finished."""
        self.draining = True
        deadline = time.monotonic() + grace
        while self.count > 0 and time.monotonic() < deadline:
            eventlet.sleep(0.05)
        return self.count == 0


# one per process: the gateway's handlers and the worker's signal handler share it
inflight = InFlight()
