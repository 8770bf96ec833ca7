"""Typed step errors: what went wrong (a status in HTTP's numbering, the one every ingress speaks, and a stable
`code`), never how an API writes it; the ingress function renders them in its API's own format. They survive the RPC
hop."""
from __future__ import annotations

from typing import Any

from nameko.exceptions import deserialize_to_instance


class StepError(Exception):
    """Base of the errors a step may raise."""

    status = 500
    code: str | None = None

    def __init__(self, message: str, code: str | None = None, param: str | None = None,
                 details: dict[str, Any] | None = None):
        # all four go into args so nameko's serialize/deserialize carries them across the hop; it turns
        # every non-string, non-container value into a string, so None comes back as "None"
        code, param = (None if v == "None" else v for v in (code, param))
        details = details if isinstance(details, dict) else {}
        super().__init__(message, code, param, details)
        self.message = message
        self.code = code or self.code
        self.param = param
        self.details = details

    def __str__(self) -> str:
        return self.message


def _typed(cls):
    return deserialize_to_instance(cls)


@_typed
class BadRequest(StepError):
    status, code = 400, "invalid_request"


@_typed
class Unauthorized(StepError):
    status, code = 401, "invalid_api_key"


@_typed
class Forbidden(StepError):
    status, code = 403, "forbidden"


@_typed
class NotFound(StepError):
    status, code = 404, "not_found"


@_typed
class PayloadTooLarge(StepError):
    status, code = 413, "payload_too_large"


@_typed
class Conflict(StepError):
    status, code = 409, "conflict"


@_typed
class PolicyRefusal(StepError):
    status, code = 400, "content_policy_violation"


@_typed
class RateLimited(StepError):
    status, code = 429, "rate_limit_exceeded"


@_typed
class UpstreamError(StepError):
    status, code = 502, "upstream_error"


@_typed
class Unavailable(StepError):
    status, code = 503, "unavailable"


@_typed
class StepTimeout(StepError):
    status, code = 504, "step_timeout"


def as_step_error(exc: BaseException) -> StepError:
    """Any exception a step leaked -> a 500 that names the step's error type but not its internals."""
    if isinstance(exc, StepError):
        return exc
    name = getattr(exc, "exc_type", None) or type(exc).__name__
    return StepError(f"internal error in a step ({name}); see the function's log for this request id",
                     code="internal_error")
