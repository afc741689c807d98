"""The web console's files (``actions/console/static``), served as plain HTTP routes.

They are read once, when the routes are built, from the installed package: no build step,
nothing fetched from elsewhere. The page itself is public; the data it shows comes from
the RPCs, which check the bearer token the page sends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, Final

from connect_proto import AsgiApp

Scope = dict[str, Any]
AsgiReceive = Callable[[], Awaitable[dict[str, Any]]]
AsgiSend = Callable[[dict[str, Any]], Awaitable[None]]

# URL path -> (file in static/, content type)
FILES: Final = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/console/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/console/style.css": ("style.css", "text/css; charset=utf-8"),
    "/favicon.ico": ("favicon.svg", "image/svg+xml"),
}
_SECURITY_HEADERS: Final = [
    # Everything is same-origin; nothing inline, nothing from elsewhere.
    (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
]


def _file_app(body: bytes, content_type: str) -> AsgiApp:
    async def app(scope: Scope, receive: AsgiReceive, send: AsgiSend) -> None:
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD"):
            await send(
                {
                    "type": "http.response.start",
                    "status": 405,
                    "headers": [(b"allow", b"GET, HEAD"), (b"content-length", b"0")],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
            *_SECURITY_HEADERS,
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    return app


def static_routes() -> dict[str, AsgiApp]:
    """The console's exact paths and their ASGI apps, for ``ConnectApp(http_routes=...)``."""
    folder = resources.files("actions.console") / "static"
    return {
        path: _file_app((folder / name).read_bytes(), content_type)
        for path, (name, content_type) in FILES.items()
    }
