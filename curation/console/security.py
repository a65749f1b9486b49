"""Who may use the console, and how a form post proves it came from the console's own page.

- **Bind.** A loopback address (127.0.0.0/8, ::1, ``localhost``) needs nothing; any other bind needs a
  token, or the console refuses to start (``check_bind``). Without a token, a request must also name a
  loopback host (``Host``), so a page whose name was rebound to 127.0.0.1 cannot read the console.
- **Token.** With a token, every request carries it: ``Authorization: Bearer T``, an ``X-Curation-Token``
  header, or the cookie the console sets (HttpOnly, SameSite=Strict) when a URL is opened with ``?token=T``
  (then redirected without it, so the token leaves the address bar). Compared in constant time.
- **Posts** (cancel, retry, export) carry a CSRF token that only a page the console served holds (an HMAC
  of a per-process secret), and a browser's ``Origin`` header must be the console's own.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from urllib.parse import urlparse

from starlette.requests import Request

TOKEN_COOKIE = "curation_console_token"
TOKEN_HEADER = "x-curation-token"
MIN_TOKEN_CHARS = 16


class ConsoleConfigError(ValueError):
    """The console cannot start as asked (a public bind without a token, a token too short)."""


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def host_name(host_header: str) -> str:
    """The name in a ``Host`` header, without the port (``[::1]:8765`` → ``::1``)."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def check_bind(host: str, token: str | None) -> None:
    """Refuse a non-loopback bind without a token of at least ``MIN_TOKEN_CHARS`` characters."""
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise ConsoleConfigError(f"the console token must have at least {MIN_TOKEN_CHARS} characters "
                                 "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(24))'`)")
    if not is_loopback(host) and not token:
        raise ConsoleConfigError(
            f"refusing to serve the console on {host}: any address other than 127.0.0.1 / ::1 / localhost "
            "needs a token (--token or CURATION_CONSOLE_TOKEN); every request must then carry it")


def same_secret(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a presented secret with the expected one."""
    return given is not None and hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def presented_token(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get(TOKEN_HEADER) or request.cookies.get(TOKEN_COOKIE)


class Csrf:
    """The form token: one per console process, in every page with a form, required on every post."""

    def __init__(self) -> None:
        self._secret = secrets.token_bytes(32)
        self.token = hmac.new(self._secret, b"curation-console-csrf", hashlib.sha256).hexdigest()

    def problem(self, request: Request, form_token: str | None) -> str | None:
        """Why this post is refused, or None. A browser always sends ``Origin`` on a post; a script with
        the console token may omit it, never send a wrong one."""
        origin = request.headers.get("origin")
        if origin is not None and urlparse(origin).netloc != request.headers.get("host", ""):
            return f"cross-origin post refused (Origin {origin})"
        if not same_secret(form_token, self.token):
            return "the form's CSRF token is missing or wrong: reload the page and try again"
        return None
