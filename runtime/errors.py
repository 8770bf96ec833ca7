"""Typed step errors. Each maps to an HTTP status and OpenAI's error `type`; they survive the RPC hop."""
from __future__ import annotations

from typing import Any

from nameko.exceptions import deserialize_to_instance


class StepError(Exception):
    """Base of the errors a step may raise; the gateway renders them in OpenAI's error format."""

    status = 500
    type = "server_error"
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

    def to_openai(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _typed(cls):
    return deserialize_to_instance(cls)


@_typed
class BadRequest(StepError):
    status, type, code = 400, "invalid_request_error", "invalid_request"


@_typed
class Unauthorized(StepError):
    status, type, code = 401, "authentication_error", "invalid_api_key"


@_typed
class Forbidden(StepError):
    status, type, code = 403, "permission_error", "forbidden"


@_typed
class NotFound(StepError):
    status, type, code = 404, "invalid_request_error", "not_found"


@_typed
class PayloadTooLarge(StepError):
    status, type, code = 413, "invalid_request_error", "payload_too_large"


@_typed
class Conflict(StepError):
    status, type, code = 409, "invalid_request_error", "conflict"


@_typed
class PolicyRefusal(StepError):
    status, type, code = 400, "invalid_request_error", "content_policy_violation"


@_typed
class RateLimited(StepError):
    status, type, code = 429, "rate_limit_error", "rate_limit_exceeded"


@_typed
class UpstreamError(StepError):
    status, type, code = 502, "api_error", "upstream_error"


@_typed
class Unavailable(StepError):
    status, type, code = 503, "api_error", "unavailable"


@_typed
class StepTimeout(StepError):
    status, type, code = 504, "timeout", "step_timeout"


def as_step_error(exc: BaseException) -> StepError:
    """Any exception a step leaked -> a 500 that names the step's error type but not its internals."""
    if isinstance(exc, StepError):
        return exc
    name = getattr(exc, "exc_type", None) or type(exc).__name__
    return StepError(f"internal error in a step ({name}); see the function's log for this request id",
                     code="internal_error")
