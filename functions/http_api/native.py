"""The native API handler: bodies and query strings validated by the operation's pydantic models (errors name the
field), answers with the operation's status code."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError
from werkzeug.wrappers import Request, Response

from scaigrid.runtime.errors import BadRequest

from .json_route import JsonRoute
from .operations import OPERATIONS
from .responses import json_response


def validation_error(exc: ValidationError, where: str) -> BadRequest:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or where
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return BadRequest(f"{where} field '{field}': {first['msg']}{more}", code="invalid_" + where, param=field)


def validate(model: type[BaseModel], data: Any, where: str) -> dict:
    try:
        return model.model_validate(data).model_dump(mode="json")
    except ValidationError as exc:
        raise validation_error(exc, where) from None


class NativeRoute(JsonRoute):
    """JSON in and out, shaped by OPERATIONS[route]."""

    def parse(self, request: Request, route: str, path_values: dict[str, Any]) -> dict[str, Any]:
        op = OPERATIONS.get(route)
        parsed = super().parse(request, route, path_values)
        if op is None:
            return parsed
        if op.body is not None:
            parsed["body"] = validate(op.body, parsed["body"] if parsed["body"] is not None else {}, "body")
        if op.query is not None:
            parsed["query"] = validate(op.query, parsed["query"], "query")
        return parsed

    def wants_stream(self, request: dict[str, Any]) -> bool:
        return False

    def render(self, envelope: dict, headers: dict) -> Response:
        op = OPERATIONS.get(envelope["route"])
        return json_response(envelope.get("response"), op.status if op else 200, headers)


