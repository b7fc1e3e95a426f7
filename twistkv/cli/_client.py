"""Talking to a node: addresses, redis-py connections, and errors mapped to exit codes.

Every connection is RESP3 (so MEMBERS, RING and VERSIONS arrive as maps), never retried
(an unreachable server is reported at once, not after redis-py's backoff), and bounded by
the C{--timeout} for both connecting and each reply. C{--consistency} is sent as
C{CONSISTENCY <level>} on every new connection, so it survives redis-py reconnecting.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from twistkv.cli._errors import CLIError, ServerError, Unavailable, Unreachable, UsageError

__all__ = [
    "DEFAULT_SERVER",
    "CONSISTENCY_LEVELS",
    "Address",
    "parse_address",
    "default_server",
    "connect",
    "translate",
    "errors_mapped",
    "text",
    "info",
    "parse_info",
    "command",
]

#: Where the CLI connects when neither --server nor $TWISTKV_SERVER says otherwise.
DEFAULT_SERVER = "127.0.0.1:7379"
#: The levels C{--consistency} accepts (the node's CONSISTENCY command takes the same).
CONSISTENCY_LEVELS = ("one", "quorum", "all")


@dataclass(frozen=True)
class Address:
    """A host and TCP port."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_address(text: str, default_host: str = "127.0.0.1") -> Address:
    """C{host:port}, C{[v6]:port}, C{:port} or a bare C{port}; anything else is a usage error."""
    raw = text.strip()
    if raw.startswith("redis://"):
        raw = raw[len("redis://"):].rstrip("/")
    if raw.isdigit():
        host, port_text = default_host, raw
    elif raw.startswith("["):
        host, sep, port_text = raw[1:].partition("]:")
        if not sep:
            raise UsageError(f"{text!r} is not an address: use host:port, e.g. 127.0.0.1:7379")
    else:
        host, sep, port_text = raw.rpartition(":")
        if not sep or ":" in host:
            raise UsageError(f"{text!r} is not an address: use host:port, e.g. 127.0.0.1:7379")
        host = host or default_host
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"{text!r} has no valid port: use host:port, e.g. 127.0.0.1:7379")
    return Address(host, int(port_text))


def default_server() -> str:
    """C{$TWISTKV_SERVER}, else L{DEFAULT_SERVER}."""
    return os.environ.get("TWISTKV_SERVER") or DEFAULT_SERVER


class _LevelConnection(redis.Connection):
    """A connection that sets the session's consistency level right after the handshake."""

    def __init__(self, *args: Any, consistency: str | None = None, **kwargs: Any) -> None:
        self.twistkv_consistency = consistency
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]

    def on_connect_check_health(self, check_health: bool = True) -> None:
        super().on_connect_check_health(check_health=check_health)
        if self.twistkv_consistency:
            self.send_command(  # type: ignore[no-untyped-call]
                "CONSISTENCY", self.twistkv_consistency.upper())
            reply = self.read_response()
            if isinstance(reply, Exception):  # pragma: no cover - read_response raises
                raise reply


def connect(
    address: Address,
    *,
    timeout: float = 5.0,
    consistency: str | None = None,
    max_connections: int | None = None,
) -> redis.Redis:
    """A redis-py client on C{address} (nothing is sent until its first command).

    Values come back as bytes; L{text} decodes them for display.
    """
    pool = redis.ConnectionPool(
        connection_class=_LevelConnection,
        host=address.host,
        port=address.port,
        protocol=3,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        consistency=consistency,
        max_connections=max_connections,
    )
    return redis.Redis(connection_pool=pool)


def command(client: redis.Redis, *args: Any) -> Any:
    """C{client.execute_command(*args)}, typed (redis-py's own method is not)."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _first_line(exc: BaseException) -> str:
    message = str(exc).strip() or type(exc).__name__
    return message.splitlines()[0]


def translate(exc: BaseException, address: Address | str) -> CLIError:
    """The L{CLIError} for a redis-py exception raised while talking to C{address}."""
    if isinstance(exc, CLIError):
        return exc
    if isinstance(exc, redis.TimeoutError):
        return Unreachable(f"no answer from {address} within the timeout ({_first_line(exc)})")
    if isinstance(exc, redis.ConnectionError):
        reason = _first_line(exc)
        if "refused" in reason.lower():
            return Unreachable(f"cannot connect to {address}: connection refused "
                               "(is a twistkv node running there?)")
        return Unreachable(f"cannot reach {address}: {reason}")
    if isinstance(exc, redis.ResponseError):
        message = _first_line(exc)
        if message.startswith("UNAVAILABLE"):
            return Unavailable(f"{address}: {message}")
        return ServerError(f"{address}: {message}")
    if isinstance(exc, redis.RedisError):
        return ServerError(f"{address}: {_first_line(exc)}")
    if isinstance(exc, OSError):
        return Unreachable(f"cannot reach {address}: {exc.strerror or exc}")
    return ServerError(f"{address}: {type(exc).__name__}: {_first_line(exc)}")


@contextmanager
def errors_mapped(address: Address | str) -> Iterator[None]:
    """Re-raise redis-py and socket errors inside the block as L{CLIError}s."""
    try:
        yield
    except CLIError:
        raise
    except (redis.RedisError, OSError) as exc:
        raise translate(exc, address) from exc


def text(value: Any) -> str:
    """A reply value as text: bytes decoded as UTF-8 (undecodable bytes escaped)."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="backslashreplace")
    if value is None:
        return ""
    return str(value)


def parse_info(body: str) -> dict[str, Any]:
    """INFO text as a flat dict; whole and decimal numbers become int and float."""
    result: dict[str, Any] = {}
    for line in body.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        name, _, raw = line.partition(":")
        value: Any = raw
        try:
            value = int(raw)
        except ValueError:
            try:
                value = float(raw)
            except ValueError:
                pass
        result[name] = value
    return result


def info(client: redis.Redis, address: Address | str, *sections: str) -> dict[str, Any]:
    """A node's INFO (all sections unless some are named), whatever the client's callbacks."""
    with errors_mapped(address):
        reply = command(client, "INFO", *(sections or ("all",)))
    if isinstance(reply, dict):  # redis-py's own INFO parser ran
        return {text(k): v for k, v in reply.items()}
    return parse_info(text(reply))
