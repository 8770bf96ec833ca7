"""Generation metrics of the inference function: in flight, time to first token, output tokens per second.

The model label is a graph.yaml model id: a request for any other model is refused before a generation starts, so
the label set is the registry's.
"""
from __future__ import annotations

import time

from prometheus_client import Gauge, Histogram

from scaigrid.runtime.metrics import BUCKETS

# livesum: a function's /metrics adds up its replicas (multiprocess folder)
GENERATIONS = Gauge("scaigrid_generations_in_flight", "Chat and completion generations running, by model",
                    ["model"], multiprocess_mode="livesum")
TTFT = Histogram("scaigrid_ttft_seconds", "Time to first token of a streamed generation (start to first content)",
                 ["model"], buckets=BUCKETS)
TOKENS_PER_SECOND = Histogram("scaigrid_output_tokens_per_second", "Output tokens of a generation over its whole "
                              "time (first token included)", ["model"],
                              buckets=(1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 200, 300, 500, 1000, 2000, 5000))


class GenerationClock:
    """Times one generation: `first_token()` at its first content (streams), `done(tokens)` at its end."""

    def __init__(self, model: str):
        self.model = model
        self.started = time.perf_counter()
        self.first_s: float | None = None  # seconds to the first content (a span says it too: telemetry.py)

    def first_token(self) -> None:
        if self.first_s is None:
            self.first_s = time.perf_counter() - self.started
            TTFT.labels(self.model).observe(self.first_s)

    def done(self, output_tokens: int) -> None:
        elapsed = time.perf_counter() - self.started
        if output_tokens > 0 and elapsed > 0:
            TOKENS_PER_SECOND.labels(self.model).observe(output_tokens / elapsed)
