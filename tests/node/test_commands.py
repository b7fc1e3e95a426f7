"""Tests for twistkv.node.commands: command semantics, called directly."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from twistkv.core.resp import Error, SimpleString, Verbatim
from twistkv.node.commands import (
    COMMANDS,
    INT64_MAX,
    ClientSession,
    CommandError,
    NodeContext,
    decode_cursor,
    encode_cursor,
)


@pytest.fixture
def session(context: NodeContext) -> ClientSession:
    return ClientSession(context, 1, "127.0.0.1:5000")


@pytest.fixture
def run(session: ClientSession, clock: Clock) -> Any:
    """Run one command and return its reply, completing any durability wait."""

    def run(*words: bytes | str) -> Any:
        args = [w.encode() if isinstance(w, str) else w for w in words]
        result = COMMANDS[args[0].decode().upper()].handler(session, args)
        if isinstance(result, Deferred):
            out: list[Any] = []
            result.addBoth(out.append)
            clock.advance(0)
            assert out, "durability wait never fired"
            return out[0]
        return result

    return run


def test_set_options(run: Any, clock: Clock) -> None:
    """SET honours NX, XX, GET, EX, PX and KEEPTTL as Redis does."""
    assert run("SET", "k", "v1") == SimpleString("OK")
    assert run("SET", "k", "v2", "NX") is None
    assert run("GET", "k") == b"v1"
    assert run("SET", "missing", "v", "XX") is None
    assert run("GET", "missing") is None
    assert run("SET", "k", "v3", "GET") == b"v1"
    assert run("SET", "k", "v4", "EX", "10") == SimpleString("OK")
    assert run("TTL", "k") == 10
    assert run("SET", "k", "v5", "KEEPTTL") == SimpleString("OK")
    assert run("PTTL", "k") == 10_000
    assert run("SET", "k", "v6", "PX", "1500") == SimpleString("OK")
    clock.advance(1.5)
    assert run("GET", "k") is None


@pytest.mark.parametrize(
    "args",
    [
        ("SET", "k", "v", "NX", "XX"),
        ("SET", "k", "v", "EX", "10", "PX", "5"),
        ("SET", "k", "v", "EX"),
        ("SET", "k", "v", "BOGUS"),
    ],
)
def test_set_syntax_errors(run: Any, args: tuple[str, ...]) -> None:
    """Contradictory or incomplete SET options are syntax errors."""
    with pytest.raises(CommandError, match="syntax error"):
        run(*args)


@pytest.mark.parametrize("amount", ["0", "-5", "abc", "1.5"])
def test_set_bad_expiry(run: Any, amount: str) -> None:
    """Non-positive or non-integer EX values are refused."""
    with pytest.raises(CommandError):
        run("SET", "k", "v", "EX", amount)


def test_counters(run: Any) -> None:
    """INCR-family commands count, refuse non-integers and refuse int64 overflow."""
    assert run("INCR", "c") == 1
    assert run("INCRBY", "c", "41") == 42
    assert run("DECR", "c") == 41
    assert run("DECRBY", "c", "50") == -9
    run("SET", "text", "abc")
    with pytest.raises(CommandError, match="not an integer"):
        run("INCR", "text")
    run("SET", "big", str(INT64_MAX))
    with pytest.raises(CommandError, match="overflow"):
        run("INCR", "big")
    with pytest.raises(CommandError, match="not an integer"):
        run("INCRBY", "c", "007")
    assert run("INCRBYFLOAT", "f", "1.5") == b"1.5"
    assert run("INCRBYFLOAT", "f", "1.5") == b"3"


def test_counter_keeps_ttl(run: Any) -> None:
    """INCR on a key with a TTL keeps the TTL, as in Redis."""
    run("SET", "c", "1", "EX", "100")
    run("INCR", "c")
    assert run("TTL", "c") == 100


def test_a_counter_reads_as_its_decimal_text_everywhere(run: Any) -> None:
    """A key INCR made a counter looks like Redis's integer string to every other command:
    GET, STRLEN, GETRANGE, TYPE; APPEND turns it into a plain string, SET resets it, and
    INCR continues from whatever integer SET wrote."""
    assert run("INCRBY", "c", "-120") == -120
    assert run("GET", "c") == b"-120"
    assert run("STRLEN", "c") == 4
    assert run("GETRANGE", "c", "1", "-1") == b"120"
    assert run("TYPE", "c") == SimpleString("string")
    assert run("APPEND", "c", "5") == 5
    assert run("INCR", "c") == -1204
    run("SET", "c", "7")
    assert run("INCR", "c") == 8
    assert run("GETDEL", "c") == b"8"
    assert run("INCR", "c") == 1


def test_append_strlen_getrange_getdel(run: Any) -> None:
    """APPEND returns the new length; STRLEN, GETRANGE and GETDEL read as Redis does."""
    assert run("APPEND", "s", "Hello") == 5
    assert run("APPEND", "s", " World") == 11
    assert run("STRLEN", "s") == 11
    assert run("GETRANGE", "s", "0", "4") == b"Hello"
    assert run("GETRANGE", "s", "-5", "-1") == b"World"
    assert run("GETDEL", "s") == b"Hello World"
    assert run("EXISTS", "s") == 0
    assert run("STRLEN", "s") == 0


def test_mset_mget_del_exists(run: Any) -> None:
    """MSET writes all pairs, MGET reads them in order, DEL and EXISTS count keys."""
    assert run("MSET", "a", "1", "b", "2", "a", "3") == SimpleString("OK")
    assert run("MGET", "a", "b", "c") == [b"3", b"2", None]
    assert run("EXISTS", "a", "a", "c") == 2
    assert run("DEL", "a", "c") == 1
    assert run("MSETNX", "b", "x", "z", "y") == 0
    assert run("MSETNX", "y", "x", "z", "y") == 1
    with pytest.raises(CommandError, match="wrong number"):
        run("MSET", "a", "1", "b")


def test_expire_family(run: Any, clock: Clock) -> None:
    """EXPIRE/PEXPIRE/EXPIREAT with NX/XX/GT/LT, TTL, PERSIST behave as in Redis 7."""
    assert run("EXPIRE", "nokey", "10") == 0
    assert run("TTL", "nokey") == -2
    run("SET", "k", "v")
    assert run("TTL", "k") == -1
    assert run("EXPIRE", "k", "10", "XX") == 0
    assert run("EXPIRE", "k", "10", "NX") == 1
    assert run("EXPIRE", "k", "20", "NX") == 0
    assert run("EXPIRE", "k", "5", "GT") == 0
    assert run("EXPIRE", "k", "50", "GT") == 1
    assert run("EXPIRE", "k", "30", "LT") == 1
    assert run("TTL", "k") == 30
    assert run("PERSIST", "k") == 1
    assert run("PERSIST", "k") == 0
    now_s = int(clock.seconds())
    assert run("EXPIREAT", "k", str(now_s + 100)) == 1
    assert run("EXPIRETIME", "k") == now_s + 100
    assert run("PEXPIRE", "k", "0") == 1  # expiry in the past deletes
    assert run("EXISTS", "k") == 0
    with pytest.raises(CommandError):
        run("EXPIRE", "k", "10", "NX", "XX")


def test_keys_and_scan(run: Any) -> None:
    """KEYS matches globs; SCAN with MATCH/COUNT visits every key and ends at cursor 0."""
    for i in range(30):
        run("SET", f"user:{i}", "x")
    run("SET", "other", "x")
    assert sorted(run("KEYS", "user:1*")) == sorted(
        [b"user:1"] + [f"user:1{i}".encode() for i in range(10)]
    )
    cursor = b"0"
    seen: list[bytes] = []
    rounds = 0
    while True:
        cursor, keys = run("SCAN", cursor, "MATCH", "user:*", "COUNT", "7")
        seen.extend(keys)
        rounds += 1
        if cursor == b"0":
            break
        assert rounds < 20
    assert sorted(seen) == sorted(f"user:{i}".encode() for i in range(30))


@pytest.mark.parametrize("key", [b"a", b"\x00\xff", b"k" * 1500, b"\x01"])
def test_cursor_round_trip(key: bytes) -> None:
    """A SCAN cursor is a decimal integer that resumes at (or, for long keys, before) its key."""
    cursor = encode_cursor(key)
    assert cursor.isdigit()
    resumed = decode_cursor(cursor)
    assert resumed is not None
    assert key.startswith(resumed) and resumed <= key


@pytest.mark.parametrize("cursor", [b"abc", b"-1", b"12"])
def test_bad_cursor(cursor: bytes) -> None:
    """A cursor we did not issue is refused (12 does not carry the 0x01 marker)."""
    with pytest.raises(CommandError, match="invalid cursor"):
        decode_cursor(cursor)


def test_dbsize_and_flushdb_guard(run: Any, context: NodeContext) -> None:
    """DBSIZE counts live keys; FLUSHDB is refused unless enabled."""
    run("MSET", "a", "1", "b", "2")
    assert run("DBSIZE") == 2
    with pytest.raises(CommandError, match="--enable-flushdb"):
        run("FLUSHDB")
    assert run("DBSIZE") == 2


def test_info_sections(run: Any) -> None:
    """INFO has the server, clients, stats, keyspace and persistence sections redis-py parses."""
    run("SET", "a", "1")
    text = run("INFO")
    assert isinstance(text, Verbatim)
    body = text.data.decode()
    for header in ("# Server", "# Clients", "# Stats", "# Keyspace", "# Persistence"):
        assert header in body
    assert "db0:keys=1,expires=0" in body
    only = run("INFO", "keyspace")
    only_body = only.data.decode()
    assert "# Server" not in only_body and "# Keyspace" in only_body


def test_config_get_matches_globs(run: Any) -> None:
    """CONFIG GET answers what redis-benchmark asks (save, appendonly) and honours globs."""
    assert run("CONFIG", "GET", "save") == {b"save": b""}
    assert run("CONFIG", "GET", "appendonly") == {b"appendonly": b"yes"}
    assert set(run("CONFIG", "GET", "max*")) == {b"maxclients", b"maxmemory"}
    with pytest.raises(CommandError, match="CONFIG SET is not supported"):
        run("CONFIG", "SET", "x", "y")


def test_client_commands(run: Any, session: ClientSession) -> None:
    """CLIENT SETNAME/GETNAME/ID/SETINFO work and names with spaces are refused."""
    assert run("CLIENT", "GETNAME") is None
    assert run("CLIENT", "SETNAME", "worker-1") == SimpleString("OK")
    assert run("CLIENT", "GETNAME") == b"worker-1"
    assert run("CLIENT", "ID") == session.client_id
    assert run("CLIENT", "SETINFO", "LIB-NAME", "redis-py") == SimpleString("OK")
    assert session.lib_name == b"redis-py"
    with pytest.raises(CommandError, match="cannot contain spaces"):
        run("CLIENT", "SETNAME", "bad name")


def test_command_docs_and_count(run: Any) -> None:
    """COMMAND COUNT matches the table and COMMAND DOCS describes commands as redis-cli expects."""
    assert run("COMMAND", "COUNT") == len(COMMANDS)
    docs = run("COMMAND", "DOCS", "get")
    assert docs[b"get"][b"summary"] == COMMANDS["GET"].summary.encode()
    info = run("COMMAND", "INFO", "set", "nosuch")
    assert info[0][0] == b"set" and info[0][1] == -3 and info[1] is None


def test_select(run: Any) -> None:
    """SELECT 0 is accepted; any other database is refused with an explanation."""
    assert run("SELECT", "0") == SimpleString("OK")
    with pytest.raises(CommandError, match="out of range"):
        run("SELECT", "1")


def test_every_command_has_usage_summary_and_valid_arity() -> None:
    """Every table row has a summary for HELP and a non-zero arity."""
    for name, cmd in COMMANDS.items():
        assert cmd.summary, name
        assert cmd.arity != 0, name
        assert name == name.upper()


def test_error_type_is_wire_error() -> None:
    """The wire Error type carries the full message (a guard for the protocol's mapping)."""
    assert "ERR x" in repr(Error("ERR x"))


def test_consistency_level_per_connection(run: Any, session: ClientSession) -> None:
    """CONSISTENCY shows DEFAULT, accepts ONE/QUORUM/ALL case-insensitively, refuses others."""
    assert run("CONSISTENCY") == SimpleString("DEFAULT")
    assert run("CONSISTENCY", "quorum") == SimpleString("OK")
    assert run("CONSISTENCY") == SimpleString("QUORUM")
    with pytest.raises(CommandError, match="unknown consistency level 'most'"):
        run("CONSISTENCY", "most")
    assert run("CONSISTENCY", "DEFAULT") == SimpleString("OK")
    assert session.consistency is None
