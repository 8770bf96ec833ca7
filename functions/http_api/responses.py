"""HTTP answers in one format: OpenAI's error shape for every error, JSON for every body."""
from __future__ import annotations

import json
from typing import Any

from werkzeug.wrappers import Response

from scaigrid.runtime.errors import StepError


def json_response(body: Any, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status=status, headers=headers or {},
                    mimetype="application/json")


def error_response(exc: StepError, headers: dict | None = None) -> Response:
    headers = dict(headers or {})
    retry_after = exc.details.get("retry_after") if exc.details else None
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return json_response(exc.to_openai(), exc.status, headers)
