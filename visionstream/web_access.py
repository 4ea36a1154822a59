"""Who may read a web surface (the dashboard, the worker's /stats pages): Host, Origin and a token.

A server bound to 127.0.0.1 is still reachable from every web page the operator opens: WebSockets have no
same-origin policy (a foreign page's ``new WebSocket("ws://127.0.0.1:6080/ws")`` connects and reads), and a
DNS-rebinding page reaches it under its own name. So a guarded request must name an allowed host (rebinding
sends the attacker's name), carry no foreign Origin (a browser always sends the page's), and, where a token is
configured (non-loopback binds), present it. Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from visionstream.settings import Settings

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})
TOKEN_COOKIE = "visionstream_token"


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps a server on this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_of(netloc: str) -> str | None:
    """The lower-case host name of a Host header or an Origin's netloc ("[::1]:6080" -> "::1"); None if invalid."""
    try:
        parts = urlsplit("//" + netloc)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return None
    return parts.hostname or None


@dataclass(frozen=True, slots=True)
class WebAccess:
    """The rule for one web surface: ``hosts`` a request may name; ``token`` it must present when set."""

    hosts: frozenset[str]
    token: str | None = None

    @classmethod
    def for_bind(cls, bind: str, extra_hosts: Iterable[str], token: str | None) -> WebAccess:
        """Loopback names, the bind address itself (unless a wildcard) and the configured names."""
        hosts = set(LOOPBACK_NAMES) | {h.strip().lower().strip("[]") for h in extra_hosts if h.strip()}
        if bind not in WILDCARD_BINDS:
            hosts.add(bind.lower())
        return cls(frozenset(hosts), token)

    def refusal(self, host: str | None, origin: str | None, presented: str | None) -> str | None:
        """Why a request with these headers is refused (for the log and the 403 body), or None."""
        if host is None or host_of(host) not in self.hosts:
            return "Host not allowed (set the allowed hosts to serve other names)"
        if origin is not None:
            parts = urlsplit(origin)
            # Same origin only: the page this server served, under the host the request names.
            if parts.scheme not in ("http", "https") or parts.netloc.lower() != host.lower():
                return "cross-origin request"
        if self.token is not None and not (
                presented and hmac.compare_digest(presented.encode(), self.token.encode())):
            return "missing or wrong token"
        return None


def presented_token(headers: object, query: object, cookies: object) -> str | None:
    """The token of a request: ``Authorization: Bearer``, then the ``token`` query parameter, then the cookie."""
    authorization = headers.get("Authorization", "")  # type: ignore[attr-defined]
    if authorization.startswith("Bearer "):
        return authorization[len("Bearer "):]
    return query.get("token") or cookies.get(TOKEN_COOKIE)  # type: ignore[attr-defined]


def stats_access(settings: Settings) -> WebAccess | None:
    """Who may read the worker's /stats pages; None where they are off: a non-loopback bind without a token
    (/stats/people names everyone identified, /stats/frames every camera)."""
    token = settings.web_stats_token.get_secret_value() if settings.web_stats_token else None
    if token is None and not is_loopback(settings.web_host):
        return None
    return WebAccess.for_bind(settings.web_host, settings.web_allowed_hosts, token)


View = Callable[[Any, Any], Awaitable[Any]]


def stats_page(app: Any, path: str) -> Callable[[View], View]:
    """``@app.page(path)`` for a /stats page: 404 where the pages are off, 403 for a request that
    :meth:`WebAccess.refusal` refuses. The operational pages (/healthz, /readyz, /metrics) are plain pages."""
    access = stats_access(app.settings)

    def register(view: View) -> View:
        async def guarded(web: Any, request: Any) -> Any:
            if access is None:
                return web.json({"error": "the /stats pages are off on a non-loopback bind without "
                                          "VISIONSTREAM_WEB_STATS_TOKEN"}, status=404)
            token = presented_token(request.headers, request.query, getattr(request, "cookies", {}))
            refusal = access.refusal(request.headers.get("Host"), request.headers.get("Origin"), token)
            if refusal is not None:
                return web.json({"error": refusal}, status=403)
            return await view(web, request)

        guarded.__name__ = guarded.__qualname__ = view.__name__  # Faust names the page's view after it
        app.page(path)(guarded)
        return view

    return register
