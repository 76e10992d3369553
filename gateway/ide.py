"""The browsable pages of a tenant's APIs: GraphiQL at `graphql/v1` and Swagger UI at `rest/v1/`, for a
browser's GET (one asking for `text/html`); every other client gets the API itself there.

Their scripts and styles are files of the installed package (`gateway/static/`, vendored from npm by
`npm ci && npm run vendor` in that folder, pinned by its lock file), served under `STATIC_PREFIX` on every
host, so the pages work on an air-gapped machine: nothing is loaded from a CDN.
"""

from __future__ import annotations

import html
from pathlib import Path

from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

STATIC_PREFIX = "/_backsaas/static"
STATIC_DIR = Path(__file__).parent / "static"
ASSETS_CACHE = "public, max-age=86400"

GRAPHIQL_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>GraphiQL - {tenant}</title>
<link rel="stylesheet" href="{static}/graphiql/graphiql.min.css">
<style>body {{ margin: 0; height: 100vh; overflow: hidden; }} #graphiql {{ height: 100vh; }}</style></head>
<body><div id="graphiql">Loading GraphiQL...</div>
<script src="{static}/graphiql/react.production.min.js"></script>
<script src="{static}/graphiql/react-dom.production.min.js"></script>
<script src="{static}/graphiql/graphiql.min.js"></script>
<script>
  const url = location.origin + location.pathname;
  const fetcher = GraphiQL.createFetcher({{url, subscriptionUrl: url.replace(/^http/, "ws")}});
  ReactDOM.createRoot(document.getElementById("graphiql")).render(React.createElement(GraphiQL, {{
    fetcher, defaultEditorToolsVisibility: true, shouldPersistHeaders: true,
    defaultQuery: "# Requests run as anon unless you add headers below, e.g.\\n"
      + "# {{\\"apikey\\": \\"<key>\\", \\"Authorization\\": \\"Bearer <key or access token>\\"}}\\nquery {{ __typename }}\\n",
  }}));
</script></body></html>
"""

SWAGGER_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>REST API - {tenant}</title>
<link rel="stylesheet" href="{static}/swagger-ui/swagger-ui.css"></head>
<body><div id="swagger-ui">Loading the API documentation...</div>
<script src="{static}/swagger-ui/swagger-ui-bundle.js"></script>
<script>
  const accept = (request) => {{ request.headers.Accept = "application/openapi+json"; return request; }};
  SwaggerUIBundle({{url: location.origin + location.pathname, dom_id: "#swagger-ui", deepLinking: true,
                    requestInterceptor: accept}});
</script></body></html>
"""


def wants_html(accept: str) -> bool:
    """A browser navigating to the URL (not a client asking for data)."""
    return "text/html" in accept


def graphiql_page(tenant: str) -> str:
    return GRAPHIQL_PAGE.format(tenant=html.escape(tenant), static=STATIC_PREFIX)


def swagger_page(tenant: str) -> str:
    return SWAGGER_PAGE.format(tenant=html.escape(tenant), static=STATIC_PREFIX)


class StaticAssets:
    """The vendored files, with a day's cache (their names carry no hash; a release changes them)."""

    def __init__(self) -> None:
        self.apps = {name: StaticFiles(directory=STATIC_DIR / name, check_dir=False) for name in ("graphiql", "swagger-ui")}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        folder, _, rest = scope["path"][len(STATIC_PREFIX) + 1:].partition("/")
        app = self.apps.get(folder)

        async def send_cached(message: dict) -> None:
            if message["type"] == "http.response.start" and message["status"] == 200:
                message["headers"] = [*message["headers"], (b"cache-control", ASSETS_CACHE.encode())]
            await send(message)

        if app is None or scope["method"] not in ("GET", "HEAD"):
            await send({"type": "http.response.start", "status": 404, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"not found"})
            return
        await app({**scope, "path": "/" + rest, "root_path": ""}, receive, send_cached)
