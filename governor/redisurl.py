"""A ``redis.url`` parsed once, so that connecting and masking read it the same way.

Why one parser: a regex that masks and a second parser that connects disagree
exactly on the URLs that matter (a password holding ``@``, a ``?password=``
query, Sentinel's bare ``secret@host``), and the disagreement is where a
password leaks into a log. So the config validates with ``parse``, the
Sentinel and Cluster connections are built from ``parse``, and ``mask`` renders from it.

For ``redis://``, ``rediss://`` and ``unix://`` redis-py's ``from_url`` does
the connecting (``urllib.parse.urlparse``), so this parse follows urlparse's
rules: the authority ends at the first ``/``, ``?`` or ``#``; the user info is
what precedes its *last* ``@``; the password is what follows the user info's
first ``:``; ``%XX`` escapes are decoded. A raw ``@`` or ``:`` in a password
therefore works. A raw ``/``, ``?`` or ``#`` cannot (urlparse would cut the
password there and redis-py would connect somewhere else, or raise an error
quoting the password), so such URLs are refused with a hint to percent-encode.
Error messages never quote any part of the URL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, unquote_plus

SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster", "rediss+cluster")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
DEFAULT_PORTS = {"redis": 6379, "rediss": 6379, "redis+sentinel": 26379, "redis+cluster": 6379,
                 "rediss+cluster": 6379}
MASK = "***"

_ENCODE_HINT = "percent-encode a '/', '?' or '#' in a user name or password (%2F, %3F, %23)"
_SECRET_NAME = re.compile(r"pass|secret|token", re.IGNORECASE)
_HOST = re.compile(r"[A-Za-z0-9._~%-]*")
_IPV6 = re.compile(r"[0-9A-Fa-f:.]+(%[A-Za-z0-9._~-]+)?")
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SENTINEL_PARAMS = ("db", "username", "password")
_CLUSTER_PARAMS = ("db", "username", "password")
_CLUSTER_FORM = "redis+cluster://[user:password@]host:port[,host:port...]/"


class RedisURLError(ValueError):
    """A ``redis.url`` that cannot be used; the message says why without quoting the URL."""


def is_secret_param(name: str) -> bool:
    """Query parameters whose value is masked: ``password`` in any case, and its cousins
    (``sentinel_password``, ``token``...): masking one too many costs nothing."""
    return bool(_SECRET_NAME.search(name))


@dataclass(frozen=True)
class RedisURL:
    """The parts of a ``redis.url``; strings are decoded (``%40`` is ``@``)."""

    scheme: str
    username: str | None
    password: str | None  # from the user info only; see ``auth_password`` for the effective one
    hosts: tuple[tuple[str, int | None], ...]  # port None: not written (the scheme's default applies)
    path: str  # decoded: "/0", "/mymaster/0", or a unix socket's path
    db: int | None
    service: str | None  # redis+sentinel:// only
    query: tuple[tuple[str, str], ...]

    @property
    def auth_username(self) -> str | None:
        """The user name sent to Redis: the user info's, else ``?username=`` (as redis-py does)."""
        return self.username or self._param("username")

    @property
    def auth_password(self) -> str | None:
        """The password sent to Redis: the user info's, else ``?password=`` (as redis-py does)."""
        return self.password or self._param("password")

    @property
    def is_cluster(self) -> bool:
        """A Redis Cluster URL: governor connects with a cluster client that follows slots."""
        return self.scheme in CLUSTER_SCHEMES

    def _param(self, name: str) -> str | None:
        values = [v for n, v in self.query if n == name]
        return values[0] if values and values[0] else None

    def masked(self) -> str:
        """The URL with every password written as ``***``, fit for logs, ``check`` and ``status``."""
        auth = ""
        if self.password:
            auth = f"{quote(self.username or '', safe='')}:{MASK}@"
        elif self.username:  # Sentinel reads a bare "name@" as a password: keep the colon there
            colon = ":" if self.scheme == "redis+sentinel" else ""
            auth = f"{quote(self.username, safe='')}{colon}@"
        hosts = ",".join(_render_host(h, p) for h, p in self.hosts)
        text = f"{self.scheme}://{auth}{hosts}{quote(self.path, safe='/')}"
        if self.query:
            text += "?" + "&".join(
                f"{quote(n, safe='')}={MASK if is_secret_param(n) else quote(v, safe='')}"
                for n, v in self.query)
        return text


def parse(url: str) -> RedisURL:
    """Splits ``url`` the way redis-py (or, for Sentinel, governor) will connect with it."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise RedisURLError("expected redis://, rediss://, unix://, redis+sentinel://, "
                            "redis+cluster://, rediss+cluster:// or 'embedded'")
    if "#" in rest:
        raise RedisURLError(f"a '#' ends the URL early (Redis ignores what follows it); {_ENCODE_HINT}")
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    raw_path, _, raw_query = tail.partition("?")
    if "@" in raw_path:
        raise RedisURLError(f"an '@' after the host; {_ENCODE_HINT}")
    query = _parse_query(raw_query)

    userinfo, at, hostport = netloc.rpartition("@")
    username = password = None
    if at:
        if ":" in userinfo:
            user, _, secret = userinfo.partition(":")
        elif scheme == "redis+sentinel":  # redis+sentinel://secret@host: a password, as always
            user, secret = "", userinfo
        else:  # redis://name@host: urlparse and redis-py read a user name
            user, secret = userinfo, ""
        username, password = unquote(user) or None, unquote(secret) or None

    path = unquote(raw_path)
    db = _query_db(query)
    service = None
    if scheme == "redis+sentinel":
        hosts = tuple(_host_port(node) for node in hostport.split(","))
        if any(not h for h, _ in hosts):
            raise RedisURLError("a redis+sentinel:// URL names its Sentinels: "
                                "redis+sentinel://host:26379[,host:port...]/service[/db]")
        service, _, db_text = path.strip("/").partition("/")
        if not service:
            raise RedisURLError("a redis+sentinel:// URL names the service: "
                                "redis+sentinel://host:26379/mymaster/0")
        if db_text:
            if not db_text.isdigit():
                raise RedisURLError("the database after the service must be a number, "
                                    "as in redis+sentinel://host:26379/mymaster/0")
            db = int(db_text) if db is None else db
        unknown = [n for n, _ in query if n not in _SENTINEL_PARAMS]
        if unknown:
            raise RedisURLError(f"redis+sentinel:// takes only the query parameters "
                                f"{', '.join(_SENTINEL_PARAMS)}, not {unknown[0]}")
    elif scheme in CLUSTER_SCHEMES:
        hosts = _cluster_nodes(hostport, path, db, query)
        db = 0 if db is not None or path.strip("/") else None
    elif scheme == "unix":
        hosts = (_host_port(hostport),) if hostport else ()
        if not path:
            raise RedisURLError("a unix:// URL names the socket: unix:///run/redis/redis.sock")
    else:
        hosts = (_host_port(hostport),)
        digits = path.replace("/", "")
        if not re.fullmatch(r"/?(\d+/?)?", path):
            raise RedisURLError(f"the path after the host must be a database number, as in "
                                f"redis://host:6379/0 ({_ENCODE_HINT})")
        if digits and db is None:
            db = int(digits)
    return RedisURL(scheme=scheme, username=username, password=password, hosts=hosts, path=path,
                    db=db, service=service, query=query)


def is_cluster(url: str) -> bool:
    """``redis+cluster://`` or ``rediss+cluster://``: decided by the scheme alone, so it
    never fails, even for a URL that ``parse`` refuses."""
    return url.partition("://")[0] in CLUSTER_SCHEMES


def _cluster_nodes(hostport: str, path: str, db: int | None,
                   query: tuple[tuple[str, str], ...]) -> tuple[tuple[str, int | None], ...]:
    """The seed nodes of a Cluster URL, after refusing what a Cluster cannot do."""
    hosts = tuple(_host_port(node) for node in hostport.split(","))
    if any(not h for h, _ in hosts):
        raise RedisURLError(f"a redis+cluster:// URL names its seed nodes: {_CLUSTER_FORM}")
    if not re.fullmatch(r"/?(\d+/?)?", path):
        raise RedisURLError(f"the path after the nodes may only be /0, as in {_CLUSTER_FORM} "
                            f"({_ENCODE_HINT})")
    digits = path.strip("/")
    if (digits and int(digits) != 0) or (db is not None and db != 0):
        raise RedisURLError("Redis Cluster has only database 0: leave the database out of "
                            f"the URL ({_CLUSTER_FORM})")
    unknown = [n for n, _ in query if n not in _CLUSTER_PARAMS]
    if unknown:
        raise RedisURLError(f"redis+cluster:// takes only the query parameters "
                            f"{', '.join(_CLUSTER_PARAMS)}, not {unknown[0]}")
    return hosts


def mask(url: str) -> str:
    """``url`` with its passwords hidden; never fails and never shows a password, even for a
    URL too broken to parse (then everything before the last ``@`` is hidden)."""
    if url == "embedded":
        return url
    try:
        return parse(url).masked()
    except RedisURLError:
        return _scrub(url)


def _scrub(text: str) -> str:
    text = re.sub(r"([?&;][^=&;?]*(?:pass|secret|token)[^=&;?]*=)[^&;]*", rf"\1{MASK}", text,
                  flags=re.IGNORECASE)
    head, sep, rest = text.partition("://")
    if not sep:
        head, rest = "", text
    if "@" in rest:
        rest = f"{MASK}@" + rest.rpartition("@")[2]
    return head + sep + rest


def _parse_query(raw: str) -> tuple[tuple[str, str], ...]:
    """``name=value`` pairs, decoded as ``parse_qs`` does; a secret's value may hold ``@``."""
    pairs = []
    for part in raw.split("&"):
        if not part:
            continue
        name, eq, value = part.partition("=")
        name = unquote_plus(name)
        if not eq or not _PARAM_NAME.fullmatch(name):
            raise RedisURLError(f"the query after '?' must be name=value pairs; {_ENCODE_HINT}")
        if "@" in value and not is_secret_param(name):
            raise RedisURLError(f"an '@' after the host; {_ENCODE_HINT}")
        pairs.append((name, unquote_plus(value)))
    return tuple(pairs)


def _query_db(query: tuple[tuple[str, str], ...]) -> int | None:
    values = [v for n, v in query if n == "db"]
    if not values:
        return None
    if not values[0].isdigit():
        raise RedisURLError("the db query parameter must be a number")
    return int(values[0])


def _host_port(node: str) -> tuple[str, int | None]:
    """``host[:port]`` or ``[v6]:port``; like urlparse, the port follows the first ``:``."""
    if node.startswith("["):
        host, close, port = node[1:].partition("]")
        if not close or not _IPV6.fullmatch(host) or (port and not port.startswith(":")):
            raise RedisURLError(f"a host in [brackets] must be an IPv6 address; {_ENCODE_HINT}")
        host, port = host.lower(), port[1:]
    else:
        host, _, port = node.partition(":")
        if not _HOST.fullmatch(host):
            raise RedisURLError(f"the host is not a host name or address; {_ENCODE_HINT}")
        host = unquote(host).lower()
    if not port:
        return host, None
    if not (port.isascii() and port.isdigit()):
        raise RedisURLError(f"the port is not a number; {_ENCODE_HINT}")
    if not 0 < int(port) < 65536:
        raise RedisURLError("the port must be a number from 1 to 65535")
    return host, int(port)


def _render_host(host: str, port: int | None) -> str:
    shown = f"[{host}]" if ":" in host else quote(host, safe="")
    return f"{shown}:{port}" if port is not None else shown
