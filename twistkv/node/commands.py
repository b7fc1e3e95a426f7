"""The Redis-compatible command set of one node.

Every command is one row of L{COMMANDS}: its arity (Redis's convention:
positive = exact, negative = at least), flags, a one-line summary (HELP,
COMMAND DOCS) and its handler. The protocol adapter looks a command up with
one dict access and calls C{handler(session, args)}; a handler returns a
reply value for L{twistkv.core.resp} to encode, or a L{Deferred} of one when
it must wait for durability, and raises L{CommandError} for user errors.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred, FirstError, gatherResults, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from twistkv import __version__
from twistkv.core.counter import CounterError
from twistkv.core.glob import compile_glob
from twistkv.core.quorum import ConsistencyLevel
from twistkv.core.record import Version
from twistkv.core.resp import Error, SimpleString, Verbatim, encode_bulk_replies
from twistkv.node.keyspace import KEEP_TTL, Seen, Wait

if TYPE_CHECKING:
    from twistkv.config import NodeConfig
    from twistkv.node.keyspace import LocalKeyspace
    from twistkv.node.metrics import NodeStats

__all__ = [
    "COMMANDS",
    "Command",
    "CommandError",
    "ClientSession",
    "NodeContext",
    "REDIS_COMPAT_VERSION",
    "help_text",
]

_log = Logger()

#: The Redis version we report to clients that gate features on it.
REDIS_COMPAT_VERSION = "7.2.0"

OK = SimpleString("OK")
PONG = SimpleString("PONG")

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


class CommandError(Exception):
    """A client error; the message is sent as a RESP error (prefix included)."""


class QuitConnection(Exception):
    """Raised by QUIT: reply, then close the connection."""


class WriteBarrier(Protocol):
    """Writes a keyspace queues for the end of the reactor turn (the cluster's plain SETs,
    L{twistkv.node.coordinator.Coordinator.put_run}), issued on demand."""

    def mark(self) -> int:
        """A token for the writes queued so far."""

    def settle(self, mark: int) -> None:
        """Issue the writes queued when C{mark} was taken, unless they were issued since."""


@dataclass
class NodeContext:
    """What command handlers may touch: the keyspace, config and counters."""

    keyspace: LocalKeyspace
    config: NodeConfig
    stats: NodeStats
    started_at: float
    clients: dict[int, ClientSession] = field(default_factory=dict)
    next_client_id: int = 1
    #: The node's ClusterRuntime (membership, ring, coordinator), when it runs one.
    cluster: Any = None
    #: Stops the node process (LEAVE calls it once the node's ranges are handed over).
    shutdown: Callable[[], Any] | None = None
    #: The writes the keyspace queues for the end of the reactor turn (None: it queues
    #: none). A connection marks it when a reply waits and settles the mark before the
    #: next command, so that pipelined commands see the writes before them.
    barrier: WriteBarrier | None = None


@dataclass(eq=False)
class ClientSession:
    """Per-connection state: protocol version, name, library info."""

    context: NodeContext
    client_id: int
    peer: str = ""
    protocol: int = 2
    name: bytes = b""
    lib_name: bytes = b""
    lib_ver: bytes = b""
    connected_at: float = field(default_factory=time.time)
    last_command: bytes = b""
    #: Set by a refused MULTI until EXEC/DISCARD: commands in between are refused.
    in_refused_multi: bool = False
    #: None = the cluster's default R/W; set by CONSISTENCY.
    consistency: ConsistencyLevel | None = None
    #: The keyspace as this connection sees it (bound to its consistency level).
    keyspace: Any = None

    def __post_init__(self) -> None:
        if self.keyspace is None:
            self.keyspace = self.context.keyspace

    def rebind(self) -> None:
        """Follow the node's keyspace after it changes (a lone node joining a cluster)."""
        keyspace = self.context.keyspace
        self.keyspace = keyspace if self.consistency is None else keyspace.at(self.consistency)

    def now_ms(self) -> int:
        return self.keyspace.now_ms()  # type: ignore[no-any-return]


Handler = Callable[[ClientSession, list[bytes]], Any]
#: Runs several pipelined calls of one command at once (see L{Command.run}).
RunHandler = Callable[[ClientSession, list[list[bytes]]], Any]


@dataclass(frozen=True, slots=True)
class Command:
    """One row of the command table."""

    name: str
    arity: int
    flags: tuple[str, ...]
    summary: str
    handler: Handler
    group: str = "string"
    usage: str = ""
    first_key: int = 0
    last_key: int = 0
    key_step: int = 0
    #: Optional: executes a run of consecutive calls that all have exactly C{run_arity}
    #: arguments (pipelined GETs, plain SETs) in one go; returns the replies' wire bytes, or
    #: a Deferred of them or of a list with one outcome per call (a reply value or an
    #: exception), or None to leave the run to L{handler}, one call at a time.
    run: RunHandler | None = None
    run_arity: int = 0


def _after(wait: Wait, reply: Any) -> Any:
    """Reply now, or once C{wait} (a durability wait) fires."""
    if wait is None:
        return reply
    return wait.addCallback(lambda _: reply)


def _then(result: Any, continuation: Callable[[Any], Any]) -> Any:
    """Run C{continuation} on C{result} now, or when it fires if it is a Deferred.

    Handlers are written once for both keyspaces: a single node answers
    reads synchronously (no Deferred on the hot path), the cluster answers
    them after a quorum round trip.
    """
    if isinstance(result, Deferred):
        return result.addCallback(continuation)
    return continuation(result)


def _gather(results: list[Any]) -> Any:
    """A list of results, or a Deferred of it when any result is a Deferred."""
    if not any(isinstance(r, Deferred) for r in results):
        return results
    return gatherResults(
        [r if isinstance(r, Deferred) else succeed(r) for r in results], consumeErrors=True
    ).addErrback(_first_error)


def _first_error(failure: Failure) -> Failure:
    """Unwrap gatherResults' FirstError so the real error reaches the client."""
    if failure.check(FirstError):
        return failure.value.subFailure  # type: ignore[no-any-return]
    return failure


def _int(arg: bytes) -> int:
    """Parse a Redis integer argument (int64, no spaces, no leading '+')."""
    try:
        if not arg or arg[:1] in b" +" or arg[-1:] == b" " or (len(arg) > 1 and arg[:1] == b"0"):
            raise ValueError
        value = int(arg)
    except ValueError:
        raise CommandError("ERR value is not an integer or out of range") from None
    if not INT64_MIN <= value <= INT64_MAX:
        raise CommandError("ERR value is not an integer or out of range")
    return value


def _check_value(session: ClientSession, value: bytes) -> None:
    limit = session.context.config.max_value_bytes
    if len(value) > limit:
        raise CommandError(
            f"ERR value of {len(value)} bytes exceeds this node's limit of {limit} bytes "
            "(--max-value-bytes)"
        )


def _expiry_from(session: ClientSession, unit_ms: int, amount: int, absolute: bool, cmd: str) -> int:
    """Absolute expiry in ms from an EX/PX/EXAT/PXAT argument."""
    if amount <= 0 and not absolute:
        raise CommandError(f"ERR invalid expire time in '{cmd}' command")
    if absolute and amount <= 0:
        raise CommandError(f"ERR invalid expire time in '{cmd}' command")
    try:
        millis = amount * unit_ms
    except OverflowError:  # pragma: no cover - ints do not overflow in Python
        raise CommandError(f"ERR invalid expire time in '{cmd}' command") from None
    result = millis if absolute else session.now_ms() + millis
    if result > INT64_MAX:
        raise CommandError(f"ERR invalid expire time in '{cmd}' command")
    return result


# -- connection -------------------------------------------------------------


def cmd_ping(session: ClientSession, args: list[bytes]) -> Any:
    if len(args) > 2:
        raise CommandError("ERR wrong number of arguments for 'ping' command")
    return args[1] if len(args) == 2 else PONG


def cmd_echo(session: ClientSession, args: list[bytes]) -> Any:
    return args[1]


def cmd_quit(session: ClientSession, args: list[bytes]) -> Any:
    raise QuitConnection()


def cmd_select(session: ClientSession, args: list[bytes]) -> Any:
    if _int(args[1]) != 0:
        raise CommandError("ERR DB index is out of range (twistkv has one keyspace: use 0)")
    return OK


def cmd_hello(session: ClientSession, args: list[bytes]) -> Any:
    i = 1
    if len(args) > 1:
        try:
            version = int(args[1])
        except ValueError:
            raise CommandError("ERR Protocol version is not an integer or out of range") from None
        if version not in (2, 3):
            raise CommandError("NOPROTO unsupported protocol version")
        i = 2
        while i < len(args):
            option = args[i].upper()
            if option == b"SETNAME" and i + 1 < len(args):
                _check_client_name(args[i + 1])
                session.name = args[i + 1]
                i += 2
            elif option == b"AUTH" and i + 2 < len(args):
                raise CommandError(
                    "ERR AUTH is not supported: twistkv has no users; protect the port instead"
                )
            else:
                raise CommandError(f"ERR Syntax error in HELLO option '{args[i].decode(errors='replace')}'")
        session.protocol = version
    return {
        b"server": b"redis",
        b"version": REDIS_COMPAT_VERSION.encode(),
        b"twistkv_version": __version__.encode(),
        b"proto": session.protocol,
        b"id": session.client_id,
        b"mode": b"standalone",
        b"role": b"master",
        b"modules": [],
    }


def _check_client_name(name: bytes) -> None:
    if any(c <= 32 or c >= 127 for c in name):
        raise CommandError("ERR Client names cannot contain spaces, newlines or special characters.")


def cmd_client(session: ClientSession, args: list[bytes]) -> Any:
    sub = args[1].upper()
    if sub == b"SETNAME" and len(args) == 3:
        _check_client_name(args[2])
        session.name = args[2]
        return OK
    if sub == b"GETNAME" and len(args) == 2:
        return session.name or None
    if sub == b"ID" and len(args) == 2:
        return session.client_id
    if sub == b"SETINFO" and len(args) == 4:
        attr = args[2].upper()
        if attr == b"LIB-NAME":
            session.lib_name = args[3]
        elif attr == b"LIB-VER":
            session.lib_ver = args[3]
        else:
            raise CommandError(f"ERR Unrecognized option '{args[2].decode(errors='replace')}'")
        return OK
    if sub == b"INFO" and len(args) == 2:
        return Verbatim(_client_line(session) + "\n")
    if sub == b"LIST" and len(args) == 2:
        lines = "".join(_client_line(s) + "\n" for s in session.context.clients.values())
        return Verbatim(lines)
    if sub in (b"NO-EVICT", b"NO-TOUCH") and len(args) == 3:
        return OK
    raise CommandError(
        f"ERR unknown subcommand or wrong number of arguments for 'client|{args[1].decode(errors='replace').lower()}' "
        "command; twistkv supports CLIENT SETNAME, GETNAME, ID, SETINFO, INFO, LIST"
    )


def _client_line(session: ClientSession) -> str:
    age = int(time.time() - session.connected_at)
    return (
        f"id={session.client_id} addr={session.peer} name={session.name.decode(errors='replace')} "
        f"age={age} db=0 resp={session.protocol} lib-name={session.lib_name.decode(errors='replace')} "
        f"lib-ver={session.lib_ver.decode(errors='replace')} cmd={session.last_command.decode(errors='replace').lower()}"
    )


def cmd_consistency(session: ClientSession, args: list[bytes]) -> Any:
    """Show or set this connection's consistency level (ONE, QUORUM, ALL)."""
    if len(args) == 1:
        level = session.consistency
        return SimpleString("DEFAULT" if level is None else level.name)
    if len(args) != 2:
        raise CommandError("ERR wrong number of arguments for 'consistency' command")
    word = args[1].decode(errors="replace")
    if word.upper() == "DEFAULT":
        session.consistency = None
        session.keyspace = session.context.keyspace
        return OK
    try:
        level = ConsistencyLevel.parse(word)
    except ValueError:
        raise CommandError(
            f"ERR unknown consistency level '{word}': use ONE, QUORUM, ALL or DEFAULT"
        ) from None
    session.consistency = level
    session.keyspace = session.context.keyspace.at(level)
    return OK


def cmd_help(session: ClientSession, args: list[bytes]) -> Any:
    return Verbatim(help_text())


def help_text() -> str:
    """HELP's answer: every command with its usage and what it does, in plain words."""
    lines = [
        "twistkv speaks the Redis protocol: use redis-cli, redis-py, or type commands here.",
        "Arguments with spaces go in \"double quotes\". Commands:",
        "",
    ]
    for cmd in sorted(COMMANDS.values(), key=lambda c: (c.group, c.name)):
        if cmd.name in _HIDDEN_FROM_HELP:
            continue
        lines.append(f"  {(cmd.name + ' ' + cmd.usage).strip():<44} {cmd.summary}")
    lines.append("")
    lines.append("Transactions (MULTI/EXEC) are not offered in this mode.")
    return "\n".join(lines) + "\n"


_NO_TRANSACTIONS = (
    "transactions (MULTI/EXEC/WATCH) are not offered by twistkv in this mode; "
    "redis-py users: use pipeline(transaction=False)"
)


def cmd_multi(session: ClientSession, args: list[bytes]) -> Any:
    """Refuse MULTI, and refuse every command up to EXEC/DISCARD too.

    A client that pipelines MULTI, commands, EXEC (redis-py's default
    pipeline) must not see some of its "transaction" applied: it would
    retry after the error and apply it twice.
    """
    session.in_refused_multi = True
    raise CommandError(f"ERR {_NO_TRANSACTIONS}")


def cmd_exec(session: ClientSession, args: list[bytes]) -> Any:
    if not session.in_refused_multi:
        raise CommandError("ERR EXEC without MULTI")
    session.in_refused_multi = False
    raise CommandError(f"EXECABORT Transaction discarded: {_NO_TRANSACTIONS}")


def cmd_discard(session: ClientSession, args: list[bytes]) -> Any:
    if not session.in_refused_multi:
        raise CommandError("ERR DISCARD without MULTI")
    session.in_refused_multi = False
    return OK


def _refuse_transactions(session: ClientSession, args: list[bytes]) -> Any:
    raise CommandError(f"ERR {_NO_TRANSACTIONS}")


def refused_in_multi(command: Command) -> Error:
    """The answer to a command queued after a refused MULTI: it was not run."""
    return Error(f"ERR {command.name} was not run: {_NO_TRANSACTIONS}")


# -- strings ----------------------------------------------------------------


def cmd_get(session: ClientSession, args: list[bytes]) -> Any:
    keyspace = session.keyspace
    if getattr(keyspace, "reads_in_runs", False):
        # A cluster: the read joins this turn's GET_BATCH to each replica (a run of one).
        return keyspace.get_run((args[1],)).addCallback(_sole_read, session.context.stats)
    found = keyspace.get(args[1])
    # A local read answers at once: no closure, no Deferred (the hot path).
    if found is None:
        session.context.stats.keyspace_misses += 1
        return None
    if type(found) is Version:
        session.context.stats.keyspace_hits += 1
        return found.value
    stats = session.context.stats

    def answer(version: Version | None) -> bytes | None:
        if version is None:
            stats.keyspace_misses += 1
            return None
        stats.keyspace_hits += 1
        return version.value

    return _then(found, answer)


def _sole_read(results: list[bytes | None | BaseException], stats: Any) -> bytes | None:
    """The reply of a GET read as a run of one: its value, None, or its error raised."""
    result = results[0]
    if isinstance(result, BaseException):
        raise result
    if result is None:
        stats.keyspace_misses += 1
    else:
        stats.keyspace_hits += 1
    return result


def _every_value(results: list[bytes | None | BaseException]) -> list[bytes | None]:
    """MGET's reply from a run of reads: every value, or the first key's error raised."""
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]


def run_get(session: ClientSession, runs: list[list[bytes]]) -> Any:
    """Consecutive GETs in one keyspace pass: the replies' wire bytes when the keyspace
    reads synchronously (one node), else one Deferred for the run (a cluster's get_run)."""
    keyspace = session.keyspace
    get_values = getattr(keyspace, "get_values", None)
    if get_values is None:
        get_run = getattr(keyspace, "get_run", None)
        if get_run is None:
            return None
        return get_run([args[1] for args in runs]).addCallback(_get_run_replies, session)
    values = get_values([args[1] for args in runs])
    stats = session.context.stats
    misses = values.count(None)
    stats.keyspace_misses += misses
    stats.keyspace_hits += len(values) - misses
    return encode_bulk_replies(values, session.protocol)


def _get_run_replies(results: list[bytes | None | BaseException], session: ClientSession
                     ) -> Any:
    """A run of GETs once every read settled: the wire replies, or (when some failed) one
    outcome per command, its value or its error, for the protocol to encode."""
    stats = session.context.stats
    misses = results.count(None)
    failed = sum(1 for result in results if isinstance(result, BaseException))
    stats.keyspace_misses += misses
    stats.keyspace_hits += len(results) - misses - failed
    if failed:
        return results
    return encode_bulk_replies(results, session.protocol)  # type: ignore[arg-type]


#: A SET's key and value, and a pair's value (C-level, for L{run_set}'s per-run loops).
_KEY_AND_VALUE = itemgetter(1, 2)
_VALUE_OF_PAIR = itemgetter(1)


def run_set(session: ClientSession, runs: list[list[bytes]]) -> Any:
    """Consecutive plain SETs as one batch: one commit, so also one durability wait (on a
    single node), or one Deferred for the run's replicated writes (in a cluster)."""
    set_run = getattr(session.keyspace, "set_run", None)
    if set_run is None:
        return None
    pairs = list(map(_KEY_AND_VALUE, runs))
    if max(map(len, map(_VALUE_OF_PAIR, pairs))) > session.context.config.max_value_bytes:
        return None  # an oversized value gets its error from cmd_set, the others still run
    wait = set_run(pairs)
    replies = OK.wire * len(runs)
    if wait is None:
        return replies
    return wait.addCallback(_run_replies, replies)


def _run_replies(errors: list[BaseException | None] | None, replies: bytes) -> Any:
    """A run's replies once its writes settled: all +OK, or (when some failed, in a cluster)
    one outcome per command, OK or its error, for the protocol to encode."""
    if errors is None:
        return replies
    return [OK if error is None else error for error in errors]


def _ok(_: object) -> SimpleString:
    return OK


def cmd_set(session: ClientSession, args: list[bytes]) -> Any:
    key, value = args[1], args[2]
    if len(value) > session.context.config.max_value_bytes:
        _check_value(session, value)
    if len(args) == 3:  # plain SET, the hot path
        wait = session.keyspace.set(key, value)
        return OK if wait is None else wait.addCallback(_ok)
    nx = xx = get = False
    expires_at = 0
    expiry_given = False
    i = 3
    n = len(args)
    while i < n:
        opt = args[i].upper()
        if opt == b"NX" and not xx:
            nx = True
        elif opt == b"XX" and not nx:
            xx = True
        elif opt == b"GET":
            get = True
        elif opt == b"KEEPTTL" and not expiry_given:
            expires_at = KEEP_TTL
            expiry_given = True
        elif opt in (b"EX", b"PX", b"EXAT", b"PXAT") and not expiry_given and i + 1 < n:
            amount = _int(args[i + 1])
            unit = 1000 if opt in (b"EX", b"EXAT") else 1
            expires_at = _expiry_from(session, unit, amount, opt.endswith(b"AT"), "set")
            expiry_given = True
            i += 1
        else:
            raise CommandError("ERR syntax error")
        i += 1
    keyspace = session.keyspace
    if not (nx or xx or get):
        return _after(keyspace.set(key, value, expires_at), OK)

    def conditional(seen: Seen) -> Any:
        current = seen.current
        old = current.value if current is not None else None
        if (nx and current is not None) or (xx and current is None):
            return old if get else None
        # With the read's context: a write made since that read stays a sibling (§14).
        return _after(keyspace.set(key, value, expires_at, seen=seen), old if get else OK)

    return _then(keyspace.read_for_update(key), conditional)


def cmd_setnx(session: ClientSession, args: list[bytes]) -> Any:
    _check_value(session, args[2])
    keyspace = session.keyspace

    def conditional(seen: Seen) -> Any:
        if seen.current is not None:
            return 0
        return _after(keyspace.set(args[1], args[2], seen=seen), 1)

    return _then(keyspace.read_for_update(args[1]), conditional)


def _setex(session: ClientSession, args: list[bytes], unit: int, name: str) -> Any:
    _check_value(session, args[3])
    expires_at = _expiry_from(session, unit, _int(args[2]), False, name)
    return _after(session.keyspace.set(args[1], args[3], expires_at), OK)


def cmd_setex(session: ClientSession, args: list[bytes]) -> Any:
    return _setex(session, args, 1000, "setex")


def cmd_psetex(session: ClientSession, args: list[bytes]) -> Any:
    return _setex(session, args, 1, "psetex")


def cmd_getdel(session: ClientSession, args: list[bytes]) -> Any:
    keyspace = session.keyspace

    def delete(seen: Seen) -> Any:
        current = seen.current
        if current is None:
            return None
        return _then(keyspace.delete([args[1]], seen=seen), lambda _: current.value)

    return _then(keyspace.read_for_update(args[1]), delete)


def cmd_getex(session: ClientSession, args: list[bytes]) -> Any:
    keyspace = session.keyspace
    if len(args) == 2:
        return _then(keyspace.get(args[1]), lambda v: None if v is None else v.value)
    opt = args[2].upper()
    if opt == b"PERSIST" and len(args) == 3:
        expires_at = 0
    elif opt in (b"EX", b"PX", b"EXAT", b"PXAT") and len(args) == 4:
        unit = 1000 if opt in (b"EX", b"EXAT") else 1
        expires_at = _expiry_from(session, unit, _int(args[3]), opt.endswith(b"AT"), "getex")
    else:
        raise CommandError("ERR syntax error")

    def touch(seen: Seen) -> Any:
        current = seen.current
        if current is None:
            return None
        return _then(keyspace.set_expiry(args[1], expires_at, seen=seen),
                     lambda _: current.value)

    return _then(keyspace.read_for_update(args[1]), touch)


def cmd_del(session: ClientSession, args: list[bytes]) -> Any:
    return session.keyspace.delete(args[1:])


def cmd_exists(session: ClientSession, args: list[bytes]) -> Any:
    keyspace = session.keyspace
    found = _gather([keyspace.get(key) for key in args[1:]])
    return _then(found, lambda versions: sum(1 for v in versions if v is not None))


def cmd_type(session: ClientSession, args: list[bytes]) -> Any:
    return _then(
        session.keyspace.get(args[1]),
        lambda v: SimpleString("none" if v is None else "string"),
    )


def cmd_mget(session: ClientSession, args: list[bytes]) -> Any:
    keyspace = session.keyspace
    if getattr(keyspace, "reads_in_runs", False):
        # A cluster: the keys are read as one run (one GET_BATCH per replica).
        return keyspace.get_run(args[1:]).addCallback(_every_value)
    found = _gather([keyspace.get(key) for key in args[1:]])
    return _then(found, lambda versions: [None if v is None else v.value for v in versions])


def cmd_mset(session: ClientSession, args: list[bytes]) -> Any:
    if len(args) % 2 == 0:
        raise CommandError("ERR wrong number of arguments for 'mset' command")
    pairs = [(args[i], args[i + 1]) for i in range(1, len(args), 2)]
    for _, value in pairs:
        _check_value(session, value)
    return _after(session.keyspace.set_many(pairs), OK)


def cmd_msetnx(session: ClientSession, args: list[bytes]) -> Any:
    if len(args) % 2 == 0:
        raise CommandError("ERR wrong number of arguments for 'msetnx' command")
    keyspace = session.keyspace
    pairs = [(args[i], args[i + 1]) for i in range(1, len(args), 2)]
    for _, value in pairs:
        _check_value(session, value)

    def conditional(versions: list[Version | None]) -> Any:
        if any(v is not None for v in versions):
            return 0
        return _after(keyspace.set_many(pairs), 1)

    return _then(_gather([keyspace.get(key) for key, _ in pairs]), conditional)


def cmd_append(session: ClientSession, args: list[bytes]) -> Any:
    keyspace = session.keyspace

    def append(seen: Seen) -> Any:
        current = seen.current
        value = args[2] if current is None else current.value + args[2]
        _check_value(session, value)
        expires = KEEP_TTL if current is not None else 0
        return _after(keyspace.set(args[1], value, expires, seen=seen), len(value))

    return _then(keyspace.read_for_update(args[1]), append)


def cmd_strlen(session: ClientSession, args: list[bytes]) -> Any:
    return _then(
        session.keyspace.get(args[1]), lambda v: 0 if v is None else len(v.value)
    )


def cmd_getrange(session: ClientSession, args: list[bytes]) -> Any:
    start, end = _int(args[2]), _int(args[3])

    def cut(version: Version | None) -> bytes:
        value = b"" if version is None else version.value
        n = len(value)
        lo = max(n + start, 0) if start < 0 else start
        hi = min(n + end if end < 0 else end, n - 1)
        if lo > hi or n == 0:
            return b""
        return value[lo : hi + 1]

    return _then(session.keyspace.get(args[1]), cut)


def _incr_by(session: ClientSession, key: bytes, delta: int) -> Any:
    """INCR/DECR/INCRBY/DECRBY: a PN-counter increment (docs/consistency.md, INCR family).

    Not a read-then-write: the keyspace applies C{delta} to its own counter entry, so
    concurrent increments through different nodes all count.
    """
    try:
        result = session.keyspace.incr_by(key, delta)
    except CounterError as error:
        raise CommandError(str(error)) from None
    if isinstance(result, Deferred):
        return result.addErrback(_counter_error)
    return result


def _counter_error(failure: Failure) -> Failure:
    """A counter refusal (not an integer, overflow) is the client's error, as in Redis."""
    if isinstance(failure.value, CounterError):
        raise CommandError(str(failure.value))
    return failure


def cmd_incr(session: ClientSession, args: list[bytes]) -> Any:
    return _incr_by(session, args[1], 1)


def cmd_decr(session: ClientSession, args: list[bytes]) -> Any:
    return _incr_by(session, args[1], -1)


def cmd_incrby(session: ClientSession, args: list[bytes]) -> Any:
    return _incr_by(session, args[1], _int(args[2]))


def cmd_decrby(session: ClientSession, args: list[bytes]) -> Any:
    delta = _int(args[2])
    if delta == INT64_MIN:
        raise CommandError("ERR decrement would overflow")
    return _incr_by(session, args[1], -delta)


def cmd_incrbyfloat(session: ClientSession, args: list[bytes]) -> Any:
    keyspace = session.keyspace
    try:
        delta = float(args[2])
    except ValueError:
        raise CommandError("ERR value is not a valid float") from None

    def increment(seen: Seen) -> Any:
        current = seen.current
        try:
            base = 0.0 if current is None else float(current.value)
        except ValueError:
            raise CommandError("ERR value is not a valid float") from None
        result = base + delta
        if math.isnan(result) or math.isinf(result):
            raise CommandError("ERR increment would produce NaN or Infinity")
        text = _format_float(result).encode()
        expires = KEEP_TTL if current is not None else 0
        return _after(keyspace.set(args[1], text, expires, seen=seen), text)

    return _then(keyspace.read_for_update(args[1]), increment)


def _format_float(value: float) -> str:
    """Redis's %.17Lg-then-trim style: shortest round-trip repr without exponent for ints."""
    if value == int(value) and abs(value) < 1e17:
        return str(int(value))
    return repr(value)


# -- expiry -----------------------------------------------------------------


def _expire(session: ClientSession, args: list[bytes], unit: int, absolute: bool) -> Any:
    keyspace = session.keyspace
    amount = _int(args[2])
    flags = {a.upper() for a in args[3:]}
    if not flags <= {b"NX", b"XX", b"GT", b"LT"} or (b"NX" in flags and len(flags) > 1) or (
        b"GT" in flags and b"LT" in flags
    ):
        raise CommandError("ERR NX and XX, GT or LT options at the same time are not compatible")
    now = session.now_ms()
    target = amount * unit if absolute else now + amount * unit
    if abs(target) > INT64_MAX:
        raise CommandError(f"ERR invalid expire time in '{args[0].decode().lower()}' command")

    def change(seen: Seen) -> Any:
        current = seen.current
        if current is None:
            return 0
        existing = current.expires_at_ms or None  # None = persistent (infinite)
        if b"NX" in flags and existing is not None:
            return 0
        if b"XX" in flags and existing is None:
            return 0
        if b"GT" in flags and (existing is None or target <= existing):
            return 0
        if b"LT" in flags and existing is not None and target >= existing:
            return 0
        if target <= now:
            return _then(keyspace.delete([args[1]], seen=seen), lambda _: 1)
        return _then(keyspace.set_expiry(args[1], target, seen=seen), lambda _: 1)

    return _then(keyspace.read_for_update(args[1]), change)


def cmd_expire(session: ClientSession, args: list[bytes]) -> Any:
    return _expire(session, args, 1000, False)


def cmd_pexpire(session: ClientSession, args: list[bytes]) -> Any:
    return _expire(session, args, 1, False)


def cmd_expireat(session: ClientSession, args: list[bytes]) -> Any:
    return _expire(session, args, 1000, True)


def cmd_pexpireat(session: ClientSession, args: list[bytes]) -> Any:
    return _expire(session, args, 1, True)


def _ttl(session: ClientSession, key: bytes, unit: int) -> Any:
    def remaining(current: Version | None) -> int:
        if current is None:
            return -2
        if not current.expires_at_ms:
            return -1
        left = current.expires_at_ms - session.now_ms()
        return (left + unit - 1) // unit if unit > 1 else left

    return _then(session.keyspace.get(key), remaining)


def cmd_ttl(session: ClientSession, args: list[bytes]) -> Any:
    return _ttl(session, args[1], 1000)


def cmd_pttl(session: ClientSession, args: list[bytes]) -> Any:
    return _ttl(session, args[1], 1)


def cmd_expiretime(session: ClientSession, args: list[bytes]) -> Any:
    def when(current: Version | None) -> int:
        if current is None:
            return -2
        return current.expires_at_ms // 1000 if current.expires_at_ms else -1

    return _then(session.keyspace.get(args[1]), when)


def cmd_persist(session: ClientSession, args: list[bytes]) -> Any:
    keyspace = session.keyspace

    def persist(seen: Seen) -> Any:
        current = seen.current
        if current is None or not current.expires_at_ms:
            return 0
        return _then(keyspace.set_expiry(args[1], 0, seen=seen), lambda _: 1)

    return _then(keyspace.read_for_update(args[1]), persist)


# -- keyspace ---------------------------------------------------------------


def cmd_keys(session: ClientSession, args: list[bytes]) -> Any:
    match = compile_glob(args[1])
    return list(session.keyspace.iter_keys(match))


def encode_cursor(key: bytes | None) -> bytes:
    """A SCAN cursor is the last key examined, as a decimal integer.

    Clients (redis-py) parse cursors as integers, so the key bytes are
    packed into one big integer behind a 0x01 marker; 0 means "done".
    Keys over 1 KiB are truncated: resuming at the prefix only repeats some
    keys, which SCAN's contract allows. No server-side cursor state exists,
    so cursors survive restarts and never expire.
    """
    if key is None:
        return b"0"
    return str(int.from_bytes(b"\x01" + key[:1024], "big")).encode()


def decode_cursor(cursor: bytes) -> bytes | None:
    """Inverse of L{encode_cursor}; None = start from the beginning."""
    if cursor == b"0":
        return None
    try:
        if not cursor.isdigit() or len(cursor) > 2500:
            raise ValueError
        number = int(cursor)
        raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
    except ValueError:
        raise CommandError("ERR invalid cursor") from None
    if not raw or raw[0] != 1:
        raise CommandError("ERR invalid cursor")
    # Resume just before the truncated prefix so no key is skipped.
    key = raw[1:]
    return key if len(key) < 1024 else key[:-1] if key else None


def cmd_scan(session: ClientSession, args: list[bytes]) -> Any:
    after = decode_cursor(args[1])
    count = 10
    match = None
    i = 2
    while i < len(args):
        opt = args[i].upper()
        if opt == b"COUNT" and i + 1 < len(args):
            count = _int(args[i + 1])
            if count < 1:
                raise CommandError("ERR syntax error")
        elif opt == b"MATCH" and i + 1 < len(args):
            match = compile_glob(args[i + 1])
        elif opt == b"TYPE" and i + 1 < len(args):
            if args[i + 1].lower() != b"string":
                match = lambda key: False  # noqa: E731 - every twistkv value is a string
        else:
            raise CommandError("ERR syntax error")
        i += 2
    keys, last = session.keyspace.scan(after, count, match)
    return [encode_cursor(last), keys]


def cmd_dbsize(session: ClientSession, args: list[bytes]) -> Any:
    return session.keyspace.key_count()


def cmd_flushdb(session: ClientSession, args: list[bytes]) -> Any:
    if not session.context.config.enable_flushdb:
        raise CommandError(
            "ERR FLUSHDB is disabled on this node: it erases every key. "
            "Start the node with --enable-flushdb to allow it"
        )
    if len(args) > 2 or (len(args) == 2 and args[1].upper() not in (b"SYNC", b"ASYNC")):
        raise CommandError("ERR syntax error")
    return _after(session.keyspace.flush(), OK)


def cmd_time(session: ClientSession, args: list[bytes]) -> Any:
    now_ms = session.now_ms()
    return [str(now_ms // 1000).encode(), str((now_ms % 1000) * 1000).encode()]


# -- server -----------------------------------------------------------------


def _info_sections(session: ClientSession) -> dict[str, list[tuple[str, Any]]]:
    ctx = session.context
    stats = ctx.stats
    keyspace = ctx.keyspace
    uptime = int(time.time() - ctx.started_at)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    keys = keyspace.key_count()
    committer = stats.committer_stats()
    return {
        "server": [
            ("redis_version", REDIS_COMPAT_VERSION),
            ("twistkv_version", __version__),
            ("redis_mode", "standalone"),
            ("node_id", ctx.config.node_id),
            ("os", f"{platform.system()} {platform.release()} {platform.machine()}"),
            ("arch_bits", 64),
            ("multiplexing_api", "twisted"),
            ("python_version", platform.python_version()),
            ("process_id", os.getpid()),
            ("tcp_listen", ctx.config.listen),
            ("uptime_in_seconds", uptime),
            ("uptime_in_days", uptime // 86400),
        ],
        "clients": [
            ("connected_clients", len(ctx.clients)),
            ("maxclients", ctx.config.max_clients),
        ],
        "memory": [
            ("used_memory_peak_rss", usage.ru_maxrss * 1024),
            ("storage_bytes", stats.storage_bytes()),
        ],
        "persistence": [
            ("storage", ctx.config.storage),
            ("durable", int(ctx.config.storage == "rocksdb")),
            ("fsync_policy", ctx.config.fsync),
            ("aof_enabled", int(ctx.config.storage == "rocksdb")),
            ("group_commits", committer.get("groups", 0)),
            ("group_commit_ops", committer.get("ops", 0)),
            ("fsync_seconds_total", round(committer.get("sync_seconds", 0.0), 6)),
            ("last_write_status", "ok" if stats.storage_healthy() else "err"),
            ("data_dir", str(ctx.config.data_dir)),
        ],
        "stats": [
            ("total_connections_received", stats.connections_total),
            ("total_commands_processed", stats.commands_total()),
            ("instantaneous_ops_per_sec", round(stats.ops_per_sec(), 1)),
            ("rejected_connections", stats.rejected_connections),
            ("expired_keys", keyspace.expired_keys),
            ("keyspace_hits", stats.keyspace_hits),
            ("keyspace_misses", stats.keyspace_misses),
            ("protocol_errors", stats.protocol_errors),
        ],
        "keyspace": (
            [("db0", f"keys={keys},expires={keyspace.keys_with_expiry()},avg_ttl=0")] if keys else []
        ),
        "cluster": _cluster_info(ctx),
    }


def _cluster_info(ctx: NodeContext) -> list[tuple[str, Any]]:
    cluster = ctx.cluster
    if cluster is None:
        return [("cluster_enabled", 0)]
    states: dict[str, int] = {}
    for member in cluster.membership.members():
        states[member.state.value] = states.get(member.state.value, 0) + 1
    fields: list[tuple[str, Any]] = [
        ("cluster_enabled", 1),
        ("mode", "cluster" if ctx.keyspace is cluster.keyspace else "single"),
        ("cluster_joined", int(cluster.membership.joined)),
        ("cluster_ready", int(cluster.ready)),
        ("cluster_name", ctx.config.cluster_name),
        ("replicas", ctx.config.replicas),
        ("read_quorum", ctx.config.read_quorum),
        ("write_quorum", ctx.config.write_quorum),
        ("ring_nodes", len(cluster.ring)),
    ]
    fields.extend((f"members_{state}", count) for state, count in sorted(states.items()))
    fields.extend(sorted(cluster.stats().items()))
    return fields


def cmd_info(session: ClientSession, args: list[bytes]) -> Any:
    sections = _info_sections(session)
    wanted = {a.decode(errors="replace").lower() for a in args[1:]}
    if not wanted or wanted & {"all", "everything", "default"}:
        wanted = set(sections)
    parts = []
    for name, fields in sections.items():
        if name not in wanted:
            continue
        lines = [f"# {name.capitalize()}"] + [f"{k}:{v}" for k, v in fields]
        parts.append("\r\n".join(lines) + "\r\n")
    return Verbatim("\r\n".join(parts))


def _config_values(session: ClientSession) -> dict[str, str]:
    config = session.context.config
    durable = config.storage == "rocksdb"
    return {
        "save": "",
        "appendonly": "yes" if durable else "no",
        "appendfsync": config.fsync if durable else "no",
        "databases": "1",
        "maxclients": str(config.max_clients),
        "maxmemory": "0",
        "proto-max-bulk-len": str(config.max_value_bytes),
        "port": config.listen.split(":")[1] if config.listen.startswith("tcp:") else "0",
        "dir": str(config.data_dir),
        "timeout": "0",
        "cluster-enabled": "no",
    }


def cmd_config(session: ClientSession, args: list[bytes]) -> Any:
    sub = args[1].upper()
    if sub == b"GET" and len(args) >= 3:
        values = _config_values(session)
        result: dict[bytes, bytes] = {}
        for pattern in args[2:]:
            match = compile_glob(pattern.lower())
            for name, value in values.items():
                if match(name.encode()):
                    result[name.encode()] = value.encode()
        return result
    if sub == b"RESETSTAT" and len(args) == 2:
        session.context.stats.reset()
        return OK
    if sub == b"SET":
        raise CommandError(
            "ERR CONFIG SET is not supported: twistkv is configured by twistd kvnode options"
        )
    raise CommandError(
        f"ERR unknown subcommand '{args[1].decode(errors='replace')}'. Try CONFIG GET or CONFIG RESETSTAT"
    )


def _command_info(cmd: Command) -> list[Any]:
    return [
        cmd.name.lower().encode(),
        cmd.arity,
        [SimpleString(f) for f in cmd.flags],
        cmd.first_key,
        cmd.last_key,
        cmd.key_step,
        [SimpleString(f"@{cmd.group}")],
        [],
        [],
        [],
    ]


def _command_doc(cmd: Command) -> dict[bytes, Any]:
    return {
        b"summary": cmd.summary.encode(),
        b"since": b"1.0.0",
        b"group": cmd.group.encode(),
        b"complexity": b"O(1)" if "fast" in cmd.flags else b"O(N)",
        b"arguments": [],
    }


def cmd_command(session: ClientSession, args: list[bytes]) -> Any:
    if len(args) == 1:
        return [_command_info(c) for c in COMMANDS.values()]
    sub = args[1].upper()
    if sub == b"COUNT" and len(args) == 2:
        return len(COMMANDS)
    if sub in (b"INFO", b"DOCS"):
        names = [a.decode(errors="replace").upper() for a in args[2:]] or list(COMMANDS)
        if sub == b"INFO":
            return [_command_info(COMMANDS[n]) if n in COMMANDS else None for n in names]
        return {n.lower().encode(): _command_doc(COMMANDS[n]) for n in names if n in COMMANDS}
    if sub == b"LIST" and len(args) == 2:
        return [name.lower().encode() for name in COMMANDS]
    raise CommandError(
        f"ERR unknown subcommand '{args[1].decode(errors='replace')}'. "
        "Try COMMAND COUNT, COMMAND INFO, COMMAND DOCS or COMMAND LIST"
    )


# -- cluster ------------------------------------------------------------------


def _cluster(session: ClientSession) -> Any:
    cluster = session.context.cluster
    if cluster is None:
        raise CommandError("ERR this node runs without a cluster runtime")
    return cluster


def _version_view(version: Version) -> dict[bytes, Any]:
    """A version as RESP: value, vector clock, HLC (and its wall time), writer, flags."""
    from twistkv.core.versioning import hlc_physical_ms

    return {
        b"value": version.value,
        b"vector_clock": {node.encode(): counter for node, counter in version.clock},
        b"hlc": version.hlc,
        b"timestamp_ms": hlc_physical_ms(version.hlc),
        b"node": version.node.encode(),
        b"tombstone": version.tombstone,
        b"expires_at_ms": version.expires_at_ms,
    }


def cmd_members(session: ClientSession, args: list[bytes]) -> Any:
    """Every member this node knows, with its state (CLUSTER NODES' role)."""
    cluster = _cluster(session)
    now = cluster.membership_service._reactor.seconds()  # noqa: SLF001 - same clock as SWIM
    rows = []
    for member in sorted(cluster.membership.members(), key=lambda m: m.node_id):
        rows.append({
            b"id": member.node_id.encode(),
            b"address": member.address.encode(),
            b"state": member.state.value.encode(),
            b"since_s": round(max(0.0, now - member.state_since), 1),
            b"incarnation": member.incarnation,
            b"client": member.metadata.get("client", "").encode(),
            b"http": member.metadata.get("http", "").encode(),
            b"in_ring": member.node_id in cluster.ring,
            b"self": member.node_id == cluster.node_id,
        })
    return rows


def cmd_where(session: ClientSession, args: list[bytes]) -> Any:
    """The preference list of a key: its N replicas in order, then the stand-ins."""
    cluster = _cluster(session)
    n = cluster.options.n
    ring = cluster.ring
    replicas = ring.preference_list(args[1], n)
    fallbacks = ring.fallback_nodes(args[1], n, limit=2)
    rows = []
    for role, nodes in (("replica", replicas), ("fallback", fallbacks)):
        for node in nodes:
            member = cluster.membership.get(node)
            state = "alive" if node == cluster.node_id else (
                member.state.value if member is not None else "unknown"
            )
            rows.append([node.encode(), role.encode(), state.encode(),
                         (cluster.address_of(node) or "").encode()])
    return rows


def cmd_ring(session: ClientSession, args: list[bytes]) -> Any:
    """Vnode ownership and key counts per node (counts asked of every reachable node)."""
    cluster = _cluster(session)
    ring = cluster.ring
    n = cluster.options.n
    primary = ring.ownership_share(1)
    replicated = ring.ownership_share(n)
    vnodes: dict[str, int] = {}
    for _, node in ring.vnode_tokens():
        vnodes[node] = vnodes.get(node, 0) + 1
    nodes = sorted(ring.nodes)

    def row(node: str, keys: Any) -> dict[bytes, Any]:
        member = cluster.membership.get(node)
        state = "alive" if node == cluster.node_id else (
            member.state.value if member is not None else "unknown"
        )
        return {
            b"id": node.encode(),
            b"state": state.encode(),
            b"vnodes": vnodes.get(node, 0),
            b"primary_share": round(primary.get(node, 0.0), 4),
            b"replica_share": round(replicated.get(node, 0.0), 4),
            b"keys": keys,
        }

    counts = [_key_count_of(cluster, node) for node in nodes]
    return _then(_gather(counts), lambda found: [row(nd, k) for nd, k in zip(nodes, found, strict=True)])


def _key_count_of(cluster: Any, node: str) -> Any:
    """Records the node's replica holds: local at once, remote over STATS (None if silent)."""
    if node == cluster.node_id:
        return cluster.replica.stats.records
    address = cluster.address_of(node)
    if address is None or not cluster.is_alive(node):
        return None
    from twistkv.core.peerwire import Frame

    def parse(frame: Any) -> Any:
        try:
            return int(json.loads(frame.payload)["replica_records"])
        except (ValueError, KeyError, TypeError):
            return None

    return (
        cluster.pool.request(address, Frame("STATS", 0), timeout=1.0)
        .addCallback(parse)
        .addErrback(lambda _: None)
    )


def cmd_versions(session: ClientSession, args: list[bytes]) -> Any:
    """Every version of a key: the reconciled siblings and what each replica holds."""
    result = session.keyspace.record(args[1])

    def show(found: Any) -> Any:
        if found is None:
            return {b"key": args[1], b"siblings": [], b"replicas": {}}
        if hasattr(found, "replies"):  # a cluster read: per-replica answers
            replicas: dict[bytes, Any] = {
                node.encode(): [_version_view(v) for v in versions]
                for node, versions in sorted(found.replies.items())
            }
            for node, reason in sorted(found.failures.items()):
                replicas[node.encode()] = ("unavailable: " + reason).encode()
            return {b"key": args[1], b"siblings": [_version_view(v) for v in found.versions],
                    b"replicas": replicas}
        node_id = session.context.config.node_id.encode()
        siblings = [_version_view(v) for v in found.versions]
        return {b"key": args[1], b"siblings": siblings, b"replicas": {node_id: siblings}}

    return _then(result, show)


def cmd_repair(session: ClientSession, args: list[bytes]) -> Any:
    """Compare Merkle trees with every live peer now and repair the keys that differ."""
    summary = _cluster(session).antientropy.repair_all()

    def show(result: Any) -> dict[bytes, Any]:
        fields = result.as_dict()
        failures = fields.pop("failures")
        out: dict[bytes, Any] = {k.encode(): v for k, v in fields.items()}
        out[b"failures"] = {peer.encode(): reason.encode() for peer, reason in failures.items()}
        return out

    return _then(summary, show)


def _start_move(session: ClientSession, action: str, start: Callable[[], Any]) -> Any:
    """Start a background range movement; +OK now, progress in REBALANCE and /cluster."""
    from twistkv.node.rebalance import RebalanceError

    try:
        moving = start()
    except RebalanceError as error:
        raise CommandError(f"ERR {error}") from None
    moving.addErrback(
        lambda failure: _log.failure("{action} failed", failure, action=action)
    )
    return moving


def cmd_leave(session: ClientSession, args: list[bytes]) -> Any:
    """Hand this node's ranges to their new owners, leave the cluster, then shut down."""
    cluster = _cluster(session)
    moving = _start_move(session, "leave", cluster.leave)
    shutdown = session.context.shutdown
    if shutdown is not None:
        moving.addCallback(lambda _: shutdown())
    return SimpleString("OK (leaving: ranges stream to their new owners, then this node stops)")


def cmd_remove(session: ClientSession, args: list[bytes]) -> Any:
    """Re-replicate a dead node's ranges from the survivors and remove it from the ring."""
    node_id = args[1].decode(errors="replace")
    _start_move(session, "remove", lambda: _cluster(session).remove(node_id))
    return SimpleString(f"OK (removing {node_id}: its ranges are being re-replicated)")


def cmd_join(session: ClientSession, args: list[bytes]) -> Any:
    """Join the cluster of the node at host:port (this node must be alone and empty)."""
    address = args[1].decode(errors="replace")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise CommandError(f"ERR JOIN needs a peer address host:port, not '{address}'")
    _start_move(session, "join", lambda: _cluster(session).join(address))
    return SimpleString(f"OK (joining through {address}: ranges stream to this node)")


def cmd_rebalance(session: ClientSession, args: list[bytes]) -> Any:
    """Ring status and range-movement progress (keys and bytes moved per range)."""
    return _resp_value(_cluster(session).rebalance_status(detail=True))


def _resp_value(value: Any) -> Any:
    """JSON-shaped data (str keys and values) as RESP reply values (bytes)."""
    if isinstance(value, dict):
        return {str(k).encode(): _resp_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_resp_value(v) for v in value]
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, float):
        return round(value, 3)
    return value


# -- the table ----------------------------------------------------------------

_HIDDEN_FROM_HELP = {"MULTI", "EXEC", "DISCARD", "WATCH", "UNWATCH", "FLUSHALL", "UNLINK"}


def _table(rows: Sequence[tuple[Any, ...]]) -> dict[str, Command]:
    table: dict[str, Command] = {}
    for row in rows:
        name, arity, flags, handler, group, usage, summary = row[:7]
        keys = row[7] if len(row) > 7 else (0, 0, 0)
        table[name] = Command(name, arity, tuple(flags.split()), summary, handler, group, usage, *keys)
    return table


ONE_KEY = (1, 1, 1)
ALL_KEYS = (1, -1, 1)
PAIRS = (1, -1, 2)

COMMANDS: dict[str, Command] = _table([
    # name, arity, flags, handler, group, usage, summary, key spec
    ("PING", -1, "fast", cmd_ping, "connection", "[message]", "Check the connection; answers PONG or the message."),
    ("ECHO", 2, "fast", cmd_echo, "connection", "message", "Answer with the message."),
    ("QUIT", -1, "fast", cmd_quit, "connection", "", "Close the connection."),
    ("HELP", -1, "fast", cmd_help, "connection", "", "List the commands (this text)."),
    ("HELLO", -1, "fast", cmd_hello, "connection", "[2|3] [SETNAME name]", "Choose protocol RESP2 or RESP3; describes the server."),
    ("SELECT", 2, "fast", cmd_select, "connection", "0", "Select database 0 (the only one)."),
    ("CONSISTENCY", -1, "fast", cmd_consistency, "connection", "[ONE|QUORUM|ALL|DEFAULT]", "Show or set how many replicas this connection's reads and writes wait for."),
    ("CLIENT", -2, "", cmd_client, "connection", "SETNAME|GETNAME|ID|SETINFO|INFO|LIST", "Inspect or name this connection."),
    ("GET", 2, "readonly fast", cmd_get, "string", "key", "Read a key's value (nil if missing).", ONE_KEY),
    ("SET", -3, "write", cmd_set, "string", "key value [NX|XX] [GET] [EX s|PX ms|EXAT t|PXAT t|KEEPTTL]", "Write a key, optionally with expiry or conditions.", ONE_KEY),
    ("SETNX", 3, "write fast", cmd_setnx, "string", "key value", "Write a key only if it does not exist.", ONE_KEY),
    ("SETEX", 4, "write", cmd_setex, "string", "key seconds value", "Write a key that expires after some seconds.", ONE_KEY),
    ("PSETEX", 4, "write", cmd_psetex, "string", "key milliseconds value", "Write a key that expires after some milliseconds.", ONE_KEY),
    ("GETDEL", 2, "write fast", cmd_getdel, "string", "key", "Read a key and delete it.", ONE_KEY),
    ("GETEX", -2, "write fast", cmd_getex, "string", "key [EX s|PX ms|EXAT t|PXAT t|PERSIST]", "Read a key and change its expiry.", ONE_KEY),
    ("GETRANGE", 4, "readonly", cmd_getrange, "string", "key start end", "Read part of a value.", ONE_KEY),
    ("MGET", -2, "readonly fast", cmd_mget, "string", "key [key ...]", "Read several keys at once.", ALL_KEYS),
    ("MSET", -3, "write", cmd_mset, "string", "key value [key value ...]", "Write several keys atomically.", PAIRS),
    ("MSETNX", -3, "write", cmd_msetnx, "string", "key value [key value ...]", "Write several keys only if none exists.", PAIRS),
    ("APPEND", 3, "write fast", cmd_append, "string", "key value", "Append to a value; answers the new length.", ONE_KEY),
    ("STRLEN", 2, "readonly fast", cmd_strlen, "string", "key", "Length of a value in bytes.", ONE_KEY),
    ("INCR", 2, "write fast", cmd_incr, "string", "key", "Add 1 to an integer value (a counter: concurrent INCRs all count; not idempotent, see docs/consistency.md).", ONE_KEY),
    ("DECR", 2, "write fast", cmd_decr, "string", "key", "Subtract 1 from an integer value.", ONE_KEY),
    ("INCRBY", 3, "write fast", cmd_incrby, "string", "key increment", "Add to an integer value.", ONE_KEY),
    ("DECRBY", 3, "write fast", cmd_decrby, "string", "key decrement", "Subtract from an integer value.", ONE_KEY),
    ("INCRBYFLOAT", 3, "write fast", cmd_incrbyfloat, "string", "key increment", "Add to a floating-point value (read-then-write: concurrent ones may be lost).", ONE_KEY),
    ("DEL", -2, "write", cmd_del, "keyspace", "key [key ...]", "Delete keys; answers how many existed.", ALL_KEYS),
    ("UNLINK", -2, "write fast", cmd_del, "keyspace", "key [key ...]", "Same as DEL.", ALL_KEYS),
    ("EXISTS", -2, "readonly fast", cmd_exists, "keyspace", "key [key ...]", "Count how many of the keys exist.", ALL_KEYS),
    ("TYPE", 2, "readonly fast", cmd_type, "keyspace", "key", "Type of a key: string or none.", ONE_KEY),
    ("EXPIRE", -3, "write fast", cmd_expire, "keyspace", "key seconds [NX|XX|GT|LT]", "Make a key expire after some seconds.", ONE_KEY),
    ("PEXPIRE", -3, "write fast", cmd_pexpire, "keyspace", "key milliseconds [NX|XX|GT|LT]", "Make a key expire after some milliseconds.", ONE_KEY),
    ("EXPIREAT", -3, "write fast", cmd_expireat, "keyspace", "key unix-seconds [NX|XX|GT|LT]", "Make a key expire at a Unix time.", ONE_KEY),
    ("PEXPIREAT", -3, "write fast", cmd_pexpireat, "keyspace", "key unix-ms [NX|XX|GT|LT]", "Make a key expire at a Unix time in ms.", ONE_KEY),
    ("TTL", 2, "readonly fast", cmd_ttl, "keyspace", "key", "Seconds until a key expires (-1 none, -2 missing).", ONE_KEY),
    ("PTTL", 2, "readonly fast", cmd_pttl, "keyspace", "key", "Milliseconds until a key expires.", ONE_KEY),
    ("EXPIRETIME", 2, "readonly fast", cmd_expiretime, "keyspace", "key", "Unix time at which a key expires.", ONE_KEY),
    ("PERSIST", 2, "write fast", cmd_persist, "keyspace", "key", "Remove a key's expiry.", ONE_KEY),
    ("KEYS", 2, "readonly", cmd_keys, "keyspace", "pattern", "List keys matching a glob pattern (use SCAN on big data sets)."),
    ("SCAN", -2, "readonly", cmd_scan, "keyspace", "cursor [MATCH pattern] [COUNT n]", "Iterate over keys a batch at a time."),
    ("DBSIZE", 1, "readonly fast", cmd_dbsize, "server", "", "Number of keys."),
    ("FLUSHDB", -1, "write", cmd_flushdb, "server", "", "Delete every key (only with --enable-flushdb)."),
    ("FLUSHALL", -1, "write", cmd_flushdb, "server", "", "Same as FLUSHDB."),
    ("INFO", -1, "", cmd_info, "server", "[section ...]", "Server, clients, memory, persistence, stats and keyspace facts."),
    ("CONFIG", -2, "", cmd_config, "server", "GET pattern | RESETSTAT", "Read configuration values."),
    ("COMMAND", -1, "", cmd_command, "server", "[COUNT|INFO|DOCS|LIST]", "Describe the commands."),
    ("TIME", 1, "fast", cmd_time, "server", "", "The server's clock."),
    ("MEMBERS", 1, "", cmd_members, "cluster", "", "Cluster members with their state (alive, suspect, dead, left)."),
    ("RING", 1, "", cmd_ring, "cluster", "", "Vnodes, ownership share and key count of every node."),
    ("WHERE", 2, "readonly", cmd_where, "cluster", "key", "Which nodes hold a key (its preference list).", ONE_KEY),
    ("LEAVE", 1, "admin", cmd_leave, "cluster", "", "Hand this node's ranges over, leave the cluster, shut down."),
    ("REMOVE", 2, "admin", cmd_remove, "cluster", "node-id", "Re-replicate a dead node's ranges and remove it."),
    ("JOIN", 2, "admin", cmd_join, "cluster", "host:port", "Join the cluster of that node (this node must be alone and empty)."),
    ("REBALANCE", 1, "", cmd_rebalance, "cluster", "", "Ring status and range-movement progress."),
    ("REPAIR", 1, "admin", cmd_repair, "cluster", "", "Run a full anti-entropy pass now (Merkle trees with every live peer)."),
    ("VERSIONS", 2, "readonly", cmd_versions, "cluster", "key", "Every version of a key with vector clock and HLC timestamp.", ONE_KEY),
    ("MULTI", 1, "fast", cmd_multi, "transactions", "", "Not offered in this mode."),
    ("EXEC", 1, "fast", cmd_exec, "transactions", "", "Not offered in this mode."),
    ("DISCARD", 1, "fast", cmd_discard, "transactions", "", "Not offered in this mode."),
    ("WATCH", -2, "fast", _refuse_transactions, "transactions", "", "Not offered in this mode."),
    ("UNWATCH", 1, "fast", _refuse_transactions, "transactions", "", "Not offered in this mode."),
])

COMMANDS["GET"] = replace(COMMANDS["GET"], run=run_get, run_arity=2)
COMMANDS["SET"] = replace(COMMANDS["SET"], run=run_set, run_arity=3)

#: Byte-keyed view for the hot path: the adapter looks up ``args[0].upper()``.
COMMANDS_BY_NAME: dict[bytes, Command] = {name.encode(): c for name, c in COMMANDS.items()}


def unknown_command_error(args: list[bytes]) -> Error:
    """Redis's wording for an unknown command, with the start of its arguments."""
    name = args[0].decode(errors="replace")[:128]
    shown = " ".join(f"'{a.decode(errors='replace')[:128]}'" for a in args[1:6])
    return Error(f"ERR unknown command '{name}', with args beginning with: {shown}".rstrip())


def arity_error(cmd: Command) -> Error:
    """Redis's wording for a wrong argument count."""
    return Error(f"ERR wrong number of arguments for '{cmd.name.lower()}' command")
