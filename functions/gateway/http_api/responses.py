"""HTTP answers: JSON for every body, OpenAI's error shape for every error but those of routes that speak another
API (Anthropic's, anthropic_api.py)."""
from __future__ import annotations

import json
from typing import Any

from werkzeug.wrappers import Response

from scaigrid.runtime.errors import StepError


def json_response(body: Any, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status=status, headers=headers or {},
                    mimetype="application/json")


# OpenAI's error `type` for each status (the runtime's errors carry a status and a code, not an API's format); both
# APIs answer errors in OpenAI's shape, so an SDK's exception classes work on /api/v1 as well
ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error", 500: "server_error",
               504: "timeout"}


def error_body(exc: StepError) -> dict[str, Any]:
    kind = ERROR_TYPES.get(exc.status) or ("invalid_request_error" if 400 <= exc.status < 499 else "api_error")
    return {"error": {"message": exc.message, "type": kind, "param": exc.param, "code": exc.code}}


def error_response(exc: StepError, headers: dict | None = None, body: dict | None = None) -> Response:
    """The error as JSON with its status and Retry-After; `body` in another API's shape, else OpenAI's."""
    headers = dict(headers or {})
    retry_after = exc.details.get("retry_after") if exc.details else None
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return json_response(body if body is not None else error_body(exc), exc.status, headers)
