"""Dynamic batching: concurrent callers' items coalesced into one call of a batch function (e.g. one ONNX run for
many embedding requests), up to `max_batch` items or `max_delay` seconds, whichever comes first.

The batch function runs in a real thread (`eventlet.tpool`), so a long C call does not freeze the other greenthreads.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import eventlet
from eventlet import tpool
from eventlet.event import Event
from eventlet.queue import LightQueue
from prometheus_client import Counter

BATCHES = Counter("scaigrid_batches_total", "Calls of a dynamically batched function", ["name"])
BATCH_ITEMS = Counter("scaigrid_batch_items_total", "Items through a dynamically batched function", ["name"])


class DynamicBatcher:
    def __init__(self, fn: Callable[[list], Sequence], max_batch: int = 32, max_delay: float = 0.005,
                 threaded: bool = True, name: str = "batch"):
        self.fn = fn
        self.name = name
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.threaded = threaded
        self.queue: LightQueue = LightQueue()
        self.batches = 0  # how many calls of fn were made (observable: tests and metrics)
        self._runner = eventlet.spawn(self._run)

    def submit(self, items: list) -> list:
        """This caller's items through `fn`, batched with whatever else is waiting; results in the same order."""
        done = Event()
        self.queue.put((items, done))
        results = done.wait()
        if isinstance(results, BaseException):
            raise results
        return results

    def _run(self) -> None:
        while True:
            waiting = [self.queue.get()]
            size = len(waiting[0][0])
            deadline = time.monotonic() + self.max_delay
            while size < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    nxt = self.queue.get(timeout=left)
                except eventlet.queue.Empty:
                    break
                waiting.append(nxt)
                size += len(nxt[0])
            flat = [item for items, _ in waiting for item in items]
            try:
                out = list(tpool.execute(self.fn, flat) if self.threaded else self.fn(flat))
            except Exception as exc:  # every caller of this batch hears it
                for _, done in waiting:
                    done.send(exc)
                continue
            self.batches += 1
            BATCHES.labels(self.name).inc()
            BATCH_ITEMS.labels(self.name).inc(len(flat))
            start = 0
            for items, done in waiting:
                done.send(out[start:start + len(items)])
                start += len(items)

    def close(self) -> None:
        self._runner.kill()
