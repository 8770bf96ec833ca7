"""The API docs page: Swagger UI 5 (renders OpenAPI 3.1) served from the swagger-ui-bundle-v2 package, offline."""
from __future__ import annotations

from pathlib import Path

import swagger_ui_bundle
from werkzeug.wrappers import Response

from scaigrid.runtime.errors import NotFound

ASSETS = {"swagger-ui-bundle.js": "application/javascript", "swagger-ui.css": "text/css",
          "favicon-32x32.png": "image/png"}
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ScaiGrid API</title>
<link rel="icon" href="/api/v1/docs/assets/favicon-32x32.png">
<link rel="stylesheet" href="/api/v1/docs/assets/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="/api/v1/docs/assets/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({url: "/api/v1/openapi.json", dom_id: "#ui", persistAuthorization: true, validatorUrl: null});</script>
</body></html>"""


def docs_page() -> str:
    return PAGE


def docs_asset(name: str) -> Response:
    if name not in ASSETS:
        raise NotFound(f"no docs asset '{name}'", code="not_found")
    data = (Path(swagger_ui_bundle.swagger_ui_path) / name).read_bytes()
    return Response(data, mimetype=ASSETS[name], headers={"Cache-Control": "public, max-age=86400"})
