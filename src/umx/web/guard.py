"""What keeps other sites away from `umx serve`: an ASGI middleware in front of every route.

A page of another site can make the visitor's browser send requests to a server on the
visitor's own machine. The server answers only what its own page asks:

- **Host**: a request must name this server as the browser reached it: its address as the
  connection arrived (``127.0.0.1:8000``, ``[::1]:8000``), ``localhost`` on a loopback address,
  and, on an address others can reach, the name given to ``--host`` and this machine's name;
  always with the server's port. Anything else (``Host: evil.example``, as a DNS-rebound page
  sends it) is refused with 421, on every bind address.
- **Origin** and **Sec-Fetch-Site**: a request a browser sends for a page of another origin (a
  fetch, a form, an ``<audio>``, ``<img>`` or ``<iframe>`` element) is refused with 403,
  whether it reads or changes; following a link to the page itself (``/``, a top-level
  navigation) is allowed, a link to anything else is not.
- **Headers** on every response (pages, files, the API, errors, event streams, downloads):
  ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``, ``X-Frame-Options:
  DENY`` and a ``Content-Security-Policy`` that lets the page load only its own files and be
  framed by no one.
"""

from __future__ import annotations

import ipaddress
import re
import socket

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from umx.audio import display_path

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
}
"""Sent with every response."""
SAME_ORIGIN_FETCHES = ("same-origin", "none")
"""`Sec-Fetch-Site` values of requests from the page itself, or typed in the address bar."""
ONLY_OWN_PAGE = "are refused: only this server's own page may ask"
PAGE = "/"
"""The one path another site may link to."""
HTTP_PORT = 80
_HOST = re.compile(
    r"^(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9.-]+))(?::(?P<port>\d{1,5}))?$"
)


def own_names(host: str) -> frozenset[str]:
    """The host names this server answers to when bound to `host` (besides its addresses).

    `localhost` always; on an address that is not a loopback one, also `host` itself when it
    is a name, and this machine's name (and its `.local` mDNS form).
    """
    names = {"localhost"}
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = host.lower() == "localhost"
        names.add(host.lower())
    if not loopback:
        machine = socket.gethostname().lower()
        names.update((machine, f"{machine}.local"))
    return frozenset(names)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def host_refusal(host: str, server: tuple[str, int | None] | None, names: frozenset[str]) -> str:
    """Why a request's `Host` does not name this server ('' when it does).

    Args:
        host: the `Host` header.
        server: the local address and port the request's connection arrived on.
        names: from `own_names`.
    """
    shown = f"the host {display_path(host[:100])}"
    match = _HOST.match(host)
    if match is None or server is None:
        return f"{shown} is not this server's; use the address umx serve printed"
    port = int(match["port"]) if match["port"] else HTTP_PORT
    literal = _address(match["ipv6"] or match["name"])
    local = _address(server[0])
    if literal is not None:
        own = literal == local
    else:
        name = match["name"].lower()
        own = name in names and (name != "localhost" or (local is not None and local.is_loopback))
    if not own or port != server[1]:
        return f"{shown} is not this server's; use the address umx serve printed"
    return ""


def site_refusal(headers: Headers, scheme: str, method: str, path: str) -> str:
    """Why a browser's request comes from another site ('' when it comes from the page, the
    address bar, a link followed to the page itself, or a program that is no browser).

    A link from another site is allowed only to the page (`PAGE`), as a top-level navigation
    (`Sec-Fetch-Dest: document`): an ``<iframe>`` of another site, or a link of its own to a
    download, would make the server do work and write files at its bidding."""
    origin = headers.get("origin")
    if origin is not None and origin.lower() != f"{scheme}://{headers.get('host', '').lower()}":
        return f"requests from {display_path(origin[:100])} {ONLY_OWN_PAGE}"
    site = headers.get("sec-fetch-site")
    link = (
        headers.get("sec-fetch-mode") == "navigate"
        and headers.get("sec-fetch-dest") == "document"
        and method in ("GET", "HEAD")
        and path == PAGE
    )
    if site is not None and site not in SAME_ORIGIN_FETCHES and not link:
        return (
            f"requests from a {display_path(site[:20])} page {ONLY_OWN_PAGE}; open "
            "the page and use it there"
        )
    return ""


class Guard:
    """ASGI middleware: refuses requests for another host (421) or from another site (403),
    in one JSON sentence, and adds `SECURITY_HEADERS` to every response.

    Args:
        app: the application behind it.
        host: the address the server is bound to (`--host`).
    """

    def __init__(self, app: ASGIApp, host: str) -> None:
        self.app = app
        self.names = own_names(host)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        headers = Headers(scope=scope)
        host = host_refusal(headers.get("host", ""), scope.get("server"), self.names)
        site = (
            "" if host else site_refusal(headers, scope["scheme"], scope["method"], scope["path"])
        )
        if host or site:
            response = JSONResponse({"error": host or site}, status_code=421 if host else 403)
            await response(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)
