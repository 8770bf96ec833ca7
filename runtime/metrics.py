"""Prometheus metrics of the runtime: per-step and per-route latency, errors."""
from prometheus_client import Counter, Gauge, Histogram

BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

STEP_SECONDS = Histogram("scaigrid_step_seconds", "Time a route step took, as seen by the caller",
                         ["route", "step", "placement"], buckets=BUCKETS)
STEP_ERRORS = Counter("scaigrid_step_errors_total", "Steps that raised", ["route", "step", "code"])
REQUEST_SECONDS = Histogram("scaigrid_request_seconds", "Whole request time in the gateway",
                            ["route", "status"], buckets=BUCKETS)
AFTER_PUBLISHED = Counter("scaigrid_after_events_total", "After-steps handed to the broker", ["step"])
# labelled even where one value would do: an unlabelled multiprocess metric opens its file at import
STREAMS_OPEN = Gauge("scaigrid_streams_open", "Token streams a gateway process is relaying (listener entries)",
                     ["function"], multiprocess_mode="livesum")
