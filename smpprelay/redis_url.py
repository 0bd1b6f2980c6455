"""Where Redis is, read from a URL (no Twisted: the config checks it when it is loaded)."""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

import attrs


@attrs.frozen
class RedisURL:
    """Where Redis is: ``redis://[user:password@]host[:port][/db]`` or ``rediss://`` (TLS)."""

    host: str
    port: int
    db: int
    tls: bool
    username: str | None
    password: str | None


def parse_url(url: str) -> RedisURL:
    """Read a Redis URL; `ValueError` naming what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"{url!r}: the scheme must be redis:// or rediss://")
    if not parts.hostname:
        raise ValueError(f"{url!r}: no host")
    path = parts.path.strip("/")
    db = parse_qs(parts.query).get("db", [path or "0"])[0]
    if not db.isdigit():
        raise ValueError(f"{url!r}: the database must be a number, not {db!r}")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"{url!r}: the port must be a number") from None
    return RedisURL(
        host=parts.hostname,
        port=port,
        db=int(db),
        tls=parts.scheme == "rediss",
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )
