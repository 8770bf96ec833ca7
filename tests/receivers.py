"""The tests' own little HTTP servers (webhook receivers, fake upstreams) share how they answer JSON and that they
keep quiet."""
from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any


class JsonHandler(BaseHTTPRequestHandler):
    """A request handler with `send_json`; its access log is silenced (the tests' output is for the tests)."""

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        """`payload` as the JSON body (bytes are sent as they are), with Content-Type and Content-Length."""
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass
