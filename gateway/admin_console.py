"""The admin console (console/, built into gateway/console/), served at `/admin/` on every host that is no
tenant's, and at the root of `admin.{BASE_DOMAIN}`.

Its hashed assets (`/admin/assets/*`) never change under one name, so they are cached for a year; every
other path under `/admin/` is the single page (`index.html`, revalidated on each load), which routes in
the browser. The console speaks only the public APIs: nothing else of the gateway exists for it.
"""

from __future__ import annotations

from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, PlainTextResponse, RedirectResponse
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

CONSOLE_PREFIX = "/admin"
CONSOLE_HOST = "admin"  # admin.{BASE_DOMAIN}: a reserved slug (functions/tenants.py), never a tenant's host
BUNDLE = Path(__file__).parent / "console"
IMMUTABLE = "public, max-age=31536000, immutable"


def is_console(path: str) -> bool:
    return path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/")


class AdminConsole:
    """ASGI app of the console's files (paths under `/admin`)."""

    def __init__(self, bundle: Path = BUNDLE) -> None:
        self.bundle = bundle
        self.assets = StaticFiles(directory=bundle / "assets", check_dir=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if scope["method"] not in ("GET", "HEAD"):
            response = PlainTextResponse("the console is read with GET", status_code=405, headers={"Allow": "GET, HEAD"})
        elif path in (CONSOLE_PREFIX, "/"):  # "/": the root of admin.{BASE_DOMAIN}
            response = RedirectResponse(CONSOLE_PREFIX + "/", status_code=308)
        elif path.startswith(CONSOLE_PREFIX + "/assets/"):
            async def send_immutable(message: dict) -> None:
                if message["type"] == "http.response.start" and message["status"] == 200:
                    message["headers"] = [*message["headers"], (b"cache-control", IMMUTABLE.encode())]
                await send(message)

            rest = path[len(CONSOLE_PREFIX + "/assets"):]
            try:
                await self.assets({**scope, "path": rest, "root_path": ""}, receive, send_immutable)
                return
            except HTTPException as missing:  # raised before anything is sent: no such asset
                response = PlainTextResponse(missing.detail, status_code=missing.status_code)
        elif (self.bundle / "index.html").is_file():
            response = FileResponse(self.bundle / "index.html", headers={"Cache-Control": "no-cache"})
        else:
            response = PlainTextResponse("the console is not built: run `npm ci && npm run build` in console/",
                                         status_code=404)
        await response(scope, receive, send)
