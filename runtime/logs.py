"""Structured (JSON) logs: every line names its function, step and request id (and its trace, when traced)."""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Callable

from eventlet.corolocal import local

# per-greenthread: which request and step the current worker is serving
current = local()
# (trace id, span id) of the current span, or None; set by runtime/tracing.py when tracing is on
trace_ids: Callable[[], tuple[str, str] | None] | None = None


def bind(**fields) -> None:
    current.__dict__.update(fields)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, function, request id and step, and trace/span ids under a span."""

    def __init__(self, function: str):
        super().__init__()
        self.function = function

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "function": getattr(current, "function", None) or self.function,
            "pid": os.getpid(),
            "msg": record.getMessage(),
        }
        for key in ("request_id", "client_request_id", "step", "replica"):
            value = getattr(current, key, None)
            if value is not None:
                doc[key] = value
        if trace_ids is not None:  # the line and its span find each other in the trace backend
            ids = trace_ids()
            if ids is not None:
                doc["trace_id"], doc["span_id"] = ids
        extra = getattr(record, "fields", None)
        if extra:
            doc.update(extra)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class ExpectedStepErrors(logging.Filter):
    """nameko logs every exception a worker raises with its traceback; a typed step error (a 401, a 404) is an
    answer, not a fault, and StepLog already logs it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        from .errors import StepError

        return not (record.exc_info and isinstance(record.exc_info[1], StepError))


def configure(function: str, level: str = "INFO", replica: int | None = None) -> None:
    """JSON lines on stderr for this process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(function))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # nameko and kombu are chatty at INFO about every connection
    for noisy in ("nameko", "kombu", "amqp"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    logging.getLogger("nameko.containers").addFilter(ExpectedStepErrors())
    if replica is not None:
        bind(replica=replica)


def log(logger: logging.Logger, level: int, msg: str, exc_info: bool = False, **fields) -> None:
    """Log with structured fields that land as JSON keys."""
    logger.log(level, msg, exc_info=exc_info, extra={"fields": fields})
