"""OpenAPI 3.1 at ``/schema/openapi.json`` and a Swagger UI at ``/schema``.

The UI's JavaScript and CSS come from the ``swagger-ui-bundle-v2`` wheel and are served by
this app under ``/static/swagger-ui``: the docs work offline and load nothing from a CDN.
"""

from __future__ import annotations

import html
from typing import Any

from litestar import Request
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import OpenAPIRenderPlugin
from litestar.router import Router
from litestar.static_files import create_static_files_router
from swagger_ui_bundle import swagger_ui_path

ASSETS_PATH = "/static/swagger-ui"
SCHEMA_PATH = "/schema"

DESCRIPTION = """\
G-Wallet: citizens' e-wallets and co-payment subsidy programs on a double-entry ledger.

Errors are RFC 9457 `application/problem+json` documents with a stable `code`. Money is an
integer number of satang. POSTs that create or move something take an `Idempotency-Key`.
"""


class LocalSwaggerUI(OpenAPIRenderPlugin):
    """Swagger UI that loads its assets from this app and sends nothing to a validator host."""

    def __init__(self) -> None:
        super().__init__(
            path="/",
            favicon=f'<link rel="icon" type="image/png" href="{ASSETS_PATH}/favicon-32x32.png">',
        )

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        title = html.escape(openapi_schema["info"]["title"])
        schema_url = self.get_openapi_json_route(request)
        # validatorUrl null: Swagger UI would otherwise send the schema to validator.swagger.io.
        return f"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{title}</title>
  {self.favicon}
  <link rel="stylesheet" href="{ASSETS_PATH}/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{ASSETS_PATH}/swagger-ui-bundle.js"></script>
  <script src="{ASSETS_PATH}/swagger-ui-standalone-preset.js"></script>
  <script>
    window.ui = SwaggerUIBundle({{
      url: "{html.escape(schema_url)}",
      dom_id: "#swagger-ui",
      validatorUrl: null,
      deepLinking: true,
      presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
      layout: "StandaloneLayout"
    }});
  </script>
</body>
</html>
""".encode()


def openapi_config(version: str) -> OpenAPIConfig:
    return OpenAPIConfig(
        title="G-Wallet API",
        version=version,
        description=DESCRIPTION,
        path=SCHEMA_PATH,
        render_plugins=[LocalSwaggerUI()],
    )


def swagger_assets() -> Router:
    return create_static_files_router(
        path=ASSETS_PATH,
        directories=[str(swagger_ui_path)],
        name="swagger-ui-assets",
        include_in_schema=False,
    )
