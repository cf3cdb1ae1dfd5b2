"""Who may read the page and send its forms, judged from the request's own headers.

DNS rebinding: a site the operator visits can point its own name at 127.0.0.1 (or at the
master's private address) and read the page through the operator's browser, which sends
that site's name in ``Host``. So the page answers only to names that cannot be an
attacker's: IP literals, ``localhost``, this machine's name and those in ``web.hosts``.
A form posted from another site carries that site in ``Origin``: an action is refused
unless the origin is the page's own (scheme, host and port)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

# sent with every answer of the metrics port: the page is never framed (clickjacking its
# buttons), never sniffed into another type, never kept by a cache; no referrer to other sites
# (not no-referrer: with it a browser sends the page's own forms with "Origin: null")
HEADERS = ("X-Frame-Options: DENY\r\nContent-Security-Policy: frame-ancestors 'none'\r\n"
           "X-Content-Type-Options: nosniff\r\nCache-Control: no-store\r\nReferrer-Policy: same-origin\r\n")


def split_host(value: str) -> tuple[str, int | None]:
    """``Host`` (or an origin's authority) as (lower-case name without a trailing dot, port)."""
    value = value.strip().lower()
    if value.startswith("["):  # [v6]:port
        name, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, sep, port = value.rpartition(":")
        if not sep or not port.isdigit():
            name, port = value, ""
    return name.rstrip("."), int(port) if port.isdigit() and len(port) <= 5 else None


def host_allowed(host: str | None, names: Iterable[str]) -> bool:
    """Whether a request with this ``Host`` header may read the page (None: an HTTP/1.0
    client that sent none, which no browser is)."""
    if host is None:
        return True
    name, _ = split_host(host)
    if not name:
        return False
    try:
        ipaddress.ip_address(name)
        return True  # an address is not a name anyone can rebind
    except ValueError:
        pass
    mine = socket.gethostname().lower().rstrip(".")
    return name in ("localhost", mine, mine.split(".", 1)[0], *names)


def same_origin(origin: str, host: str | None) -> bool:
    """Whether a POST's ``Origin`` is the page itself: http, and the host and port the
    request was sent to (``null``, another scheme, name or port: another site)."""
    scheme, sep, authority = origin.strip().lower().partition("://")
    if not sep or scheme != "http" or host is None or "/" in authority:
        return False
    name, port = split_host(authority)
    own_name, own_port = split_host(host)
    return (name, port or 80) == (own_name, own_port or 80)
