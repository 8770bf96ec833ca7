"""The default route handler: a JSON body (and path and query values) in, the envelope's response out as JSON."""
from __future__ import annotations

import json
from typing import Any

from werkzeug.wrappers import Request, Response

from scaigrid.runtime.errors import BadRequest

from .responses import json_response


class JsonRoute:
    """request = {body, path, query}; the answer is `envelope.response` as JSON."""

    def parse(self, request: Request, path_values: dict[str, Any]) -> dict[str, Any]:
        body = None
        raw = request.get_data(cache=True)
        if raw:
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise BadRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from None
        return {"body": body, "path": path_values, "query": request.args.to_dict()}

    def render(self, envelope: dict, headers: dict) -> Response:
        return json_response(envelope.get("response"), 200, headers)
