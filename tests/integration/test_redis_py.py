"""Command semantics through redis-py 8.1, as an application would see them.

Most tests run twice: once with redis-py's default connection handshake
(HELLO 3, CLIENT SETINFO, i.e. RESP3) and once with C{protocol=2} (RESP2,
no HELLO), against one node shared by the module. Each test writes only
keys under its own prefix, so the tests do not see each other's data.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest
import redis
from redis.exceptions import ResponseError

from .conftest import Node, NodeFactory

pytestmark = pytest.mark.integration

#: The shared node's --max-value-bytes: small, so the limit is cheap to test.
MAX_VALUE = 4096
INT64_MAX = 2**63 - 1


@pytest.fixture(scope="module")
def shared(module_node_factory: NodeFactory) -> Node:
    """The module's node: RocksDB, fsync always, a 4 KiB value limit, FLUSHDB refused."""
    return module_node_factory.start("shared", extra_args=["--max-value-bytes", str(MAX_VALUE)])


@pytest.fixture(scope="module")
def flushable(module_node_factory: NodeFactory) -> Node:
    """A node started with --enable-flushdb (used only by tests that empty it)."""
    return module_node_factory.start("flushable", extra_args=["--enable-flushdb"])


@pytest.fixture(params=["resp3-default", "resp2"])
def protocol_kwargs(request: pytest.FixtureRequest) -> dict[str, int]:
    """redis-py's default handshake (no protocol argument), or RESP2."""
    return {} if request.param == "resp3-default" else {"protocol": 2}


@pytest.fixture
def r(shared: Node, protocol_kwargs: dict[str, int]) -> redis.Redis:
    """A decoding client on one connection to the shared node."""
    return shared.client(decode_responses=True, single_connection_client=True, **protocol_kwargs)


@pytest.fixture
def rb(shared: Node, protocol_kwargs: dict[str, int]) -> redis.Redis:
    """A bytes client on one connection to the shared node."""
    return shared.client(single_connection_client=True, **protocol_kwargs)


@pytest.fixture
def key(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Key names private to this test (and protocol variant)."""
    # Brackets from parametrize ids would be glob character classes in KEYS/SCAN patterns.
    prefix = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)

    def make(name: str = "k") -> str:
        return f"{prefix}:{name}"

    return make


def test_default_handshake_is_resp3_with_library_info(shared: Node) -> None:
    """redis-py's default handshake succeeds and the node records what it said.

    Fails if HELLO 3 or CLIENT SETINFO is refused (redis-py raises on the
    former) or if the session does not remember protocol and library name.
    """
    client = shared.client(decode_responses=True, single_connection_client=True)
    assert client.ping() is True
    conn = client.connection
    assert conn is not None
    assert conn.handshake_metadata is not None
    meta = {
        (k.decode() if isinstance(k, bytes) else k): v
        for k, v in conn.handshake_metadata.items()
    }
    assert meta["proto"] == 3
    line = client.execute_command("CLIENT", "INFO")
    assert "resp=3" in line
    assert "lib-name=redis-py" in line


def test_set_get_basic(r: redis.Redis, key: Callable[[str], str]) -> None:
    """SET then GET returns the value; GET of a missing key is nil; SET overwrites."""
    k = key()
    assert r.get(k) is None
    assert r.set(k, "v1") is True
    assert r.get(k) == "v1"
    assert r.set(k, "v2") is True
    assert r.get(k) == "v2"


def test_set_ex_px_set_expiry_and_plain_set_clears_it(r: redis.Redis, key: Callable[[str], str]) -> None:
    """SET EX/PX give the key a TTL; a plain SET removes it, like Redis."""
    k = key()
    assert r.set(k, "v", ex=100) is True
    assert 0 < r.ttl(k) <= 100
    assert r.set(k, "v", px=50_000) is True
    assert 0 < r.pttl(k) <= 50_000
    assert r.set(k, "w") is True
    assert r.ttl(k) == -1


def test_set_nx_xx(r: redis.Redis, key: Callable[[str], str]) -> None:
    """NX writes only a missing key, XX only an existing one; a refused SET answers nil."""
    k = key()
    assert r.set(k, "first", xx=True) is None
    assert r.exists(k) == 0
    assert r.set(k, "first", nx=True) is True
    assert r.set(k, "second", nx=True) is None
    assert r.get(k) == "first"
    assert r.set(k, "third", xx=True) is True
    assert r.get(k) == "third"


def test_set_get_option_returns_old_value(r: redis.Redis, key: Callable[[str], str]) -> None:
    """SET ... GET answers the previous value (nil when there was none) and still writes."""
    k = key()
    assert r.set(k, "a", get=True) is None
    assert r.set(k, "b", get=True) == "a"
    assert r.get(k) == "b"


def test_set_keepttl(r: redis.Redis, key: Callable[[str], str]) -> None:
    """SET KEEPTTL replaces the value but keeps the existing expiry."""
    k = key()
    r.set(k, "a", ex=1000)
    expire_at = r.expiretime(k)
    assert r.set(k, "b", keepttl=True) is True
    assert r.get(k) == "b"
    assert r.expiretime(k) == expire_at
    assert r.ttl(k) > 0


def test_set_syntax_errors(r: redis.Redis, key: Callable[[str], str]) -> None:
    """Contradictory or malformed SET options are errors and write nothing."""
    k = key()
    with pytest.raises(ResponseError, match="syntax error"):
        r.execute_command("SET", k, "v", "NX", "XX")
    with pytest.raises(ResponseError, match="not an integer"):
        r.execute_command("SET", k, "v", "EX", "soon")
    with pytest.raises(ResponseError, match="invalid expire time"):
        r.execute_command("SET", k, "v", "EX", "0")
    assert r.exists(k) == 0


def test_del_and_exists(r: redis.Redis, key: Callable[[str], str]) -> None:
    """DEL answers how many existed; EXISTS counts arguments (duplicates included)."""
    a, b, c = key("a"), key("b"), key("c")
    r.mset({a: "1", b: "2"})
    assert r.exists(a, b, c) == 2
    assert r.exists(a, a) == 2
    assert r.delete(a, c) == 1
    assert r.exists(a) == 0
    assert r.delete(a) == 0
    assert r.get(b) == "2"


def test_mset_mget(r: redis.Redis, key: Callable[[str], str]) -> None:
    """MSET writes every pair; MGET answers in order with nil for missing keys."""
    keys = [key(str(i)) for i in range(5)]
    assert r.mset({k: f"value-{i}" for i, k in enumerate(keys)}) is True
    assert r.mget([*keys, key("missing")]) == [f"value-{i}" for i in range(5)] + [None]
    with pytest.raises(ResponseError, match="wrong number of arguments"):
        r.execute_command("MSET", keys[0], "v", keys[1])


def test_append_and_strlen(r: redis.Redis, key: Callable[[str], str]) -> None:
    """APPEND creates or extends and answers the new length; STRLEN agrees (0 if missing)."""
    k = key()
    assert r.strlen(k) == 0
    assert r.append(k, "Hello") == 5
    assert r.append(k, " World") == 11
    assert r.get(k) == "Hello World"
    assert r.strlen(k) == 11


def test_incr_decr_incrby(r: redis.Redis, key: Callable[[str], str]) -> None:
    """INCR/DECR/INCRBY/DECRBY do 64-bit integer arithmetic, a missing key counting as 0."""
    k = key()
    assert r.incr(k) == 1
    assert r.incrby(k, 41) == 42
    assert r.decr(k) == 41
    assert r.decrby(k, 50) == -9
    assert r.incrby(k, -1) == -10
    assert r.get(k) == "-10"


def test_incr_on_non_integer_is_an_error_and_changes_nothing(
    r: redis.Redis, key: Callable[[str], str]
) -> None:
    """INCR of a non-integer value, or by a non-integer amount, errors and leaves the value."""
    k = key()
    for bad in ("abc", "1.5", " 1", "1 ", "+1", "01", ""):
        r.set(k, bad)
        with pytest.raises(ResponseError, match="not an integer or out of range"):
            r.incr(k)
        assert r.get(k) == bad
    r.set(k, "5")
    with pytest.raises(ResponseError, match="not an integer or out of range"):
        r.execute_command("INCRBY", k, "two")
    assert r.get(k) == "5"


def test_incr_overflow_is_an_error(r: redis.Redis, key: Callable[[str], str]) -> None:
    """Incrementing past int64 is refused (the value stays) instead of growing a bignum."""
    k = key()
    r.set(k, str(INT64_MAX))
    with pytest.raises(ResponseError, match="overflow"):
        r.incr(k)
    assert r.get(k) == str(INT64_MAX)
    r.set(k, str(-(2**63)))
    with pytest.raises(ResponseError, match="overflow"):
        r.decr(k)
    with pytest.raises(ResponseError, match="not an integer or out of range"):
        r.execute_command("INCRBY", k, str(2**63))


def test_getdel(r: redis.Redis, key: Callable[[str], str]) -> None:
    """GETDEL answers the value and removes the key; nil for a missing key."""
    k = key()
    r.set(k, "once")
    assert r.getdel(k) == "once"
    assert r.exists(k) == 0
    assert r.getdel(k) is None


def test_expire_ttl_persist(r: redis.Redis, key: Callable[[str], str]) -> None:
    """TTL is -2 for missing and -1 for persistent keys; EXPIRE sets it, PERSIST removes it."""
    k = key()
    assert r.ttl(k) == -2
    assert r.expire(k, 100) is False
    r.set(k, "v")
    assert r.ttl(k) == -1
    assert r.expire(k, 100) is True
    assert 0 < r.ttl(k) <= 100
    assert 0 < r.pttl(k) <= 100_000
    assert r.persist(k) is True
    assert r.ttl(k) == -1
    assert r.persist(k) is False


def test_expire_in_the_past_deletes(r: redis.Redis, key: Callable[[str], str]) -> None:
    """EXPIRE with a non-positive time deletes the key at once, as in Redis."""
    k = key()
    r.set(k, "v")
    assert r.expire(k, -1) is True
    assert r.exists(k) == 0


def test_short_expiry_removes_key(r: redis.Redis, key: Callable[[str], str]) -> None:
    """A key set with PX 200 disappears (polled with a 10 s deadline) and EXISTS agrees."""
    k = key()
    r.set(k, "v", px=200)
    deadline = time.monotonic() + 10
    while r.get(k) is not None:
        assert time.monotonic() < deadline, "key set with PX 200 still readable after 10 s"
        time.sleep(0.05)
    assert r.exists(k) == 0
    assert r.ttl(k) == -2


def test_keys_pattern(r: redis.Redis, key: Callable[[str], str]) -> None:
    """KEYS answers exactly the keys matching the glob."""
    names = ["user:1", "user:2", "user:10", "order:1"]
    r.mset({key(n): "x" for n in names})
    assert sorted(r.keys(key("user:*"))) == sorted(key(n) for n in names[:3])
    assert sorted(r.keys(key("user:?"))) == sorted([key("user:1"), key("user:2")])
    assert r.keys(key("nothing*")) == []


def test_scan_iter_visits_all_500_keys(r: redis.Redis, key: Callable[[str], str]) -> None:
    """SCAN MATCH/COUNT via scan_iter returns each of 500 keys at least once and nothing else.

    Fails if a cursor skips keys, never reaches 0, or MATCH lets other keys through.
    """
    wanted = {key(f"s{i:04d}") for i in range(500)}
    pipe = r.pipeline(transaction=False)
    for name in wanted:
        pipe.set(name, "1")
    pipe.set(key("other"), "1")
    assert all(pipe.execute())

    seen = list(r.scan_iter(match=key("s*"), count=37))
    assert set(seen) == wanted
    assert len(seen) >= 500

    # By hand: COUNT 10 pages the scan (many calls), and the cursor ends at 0.
    cursor, calls, manual = 0, 0, set()
    while True:
        cursor, batch = r.scan(cursor, match=key("s*"), count=10)
        calls += 1
        manual.update(batch)
        if cursor == 0:
            break
        assert calls < 10_000, "SCAN cursor never returned to 0"
    assert manual == wanted
    assert calls > 10


def test_scan_invalid_cursor(r: redis.Redis) -> None:
    """A cursor that the node never gave out is refused with an error."""
    with pytest.raises(ResponseError, match="invalid cursor"):
        r.execute_command("SCAN", "banana")


def test_info_sections_parse(r: redis.Redis, shared: Node, key: Callable[[str], str]) -> None:
    """INFO's server/clients/stats/keyspace/persistence sections parse with redis-py's info()."""
    r.set(key(), "v")
    everything = r.info()
    assert everything["redis_version"]
    assert everything["process_id"] == shared.pid

    server = r.info("server")
    assert server["process_id"] == shared.pid
    assert isinstance(server["uptime_in_seconds"], int)
    assert "connected_clients" not in server

    clients = r.info("clients")
    assert clients["connected_clients"] >= 1
    assert "redis_version" not in clients

    stats = r.info("stats")
    assert stats["total_commands_processed"] > 0
    assert stats["total_connections_received"] >= 1

    keyspace = r.info("keyspace")
    assert keyspace["db0"]["keys"] >= 1

    persistence = r.info("persistence")
    assert persistence["storage"] == "rocksdb"
    assert persistence["fsync_policy"] == "always"


def test_flushdb_refused_by_default(r: redis.Redis, key: Callable[[str], str]) -> None:
    """Without --enable-flushdb, FLUSHDB and FLUSHALL are refused, name the flag, and erase nothing."""
    k = key()
    r.set(k, "keep")
    with pytest.raises(ResponseError, match="--enable-flushdb"):
        r.flushdb()
    with pytest.raises(ResponseError, match="--enable-flushdb"):
        r.flushall()
    assert r.get(k) == "keep"


def test_flushdb_allowed_when_enabled_and_dbsize(
    flushable: Node, protocol_kwargs: dict[str, int]
) -> None:
    """With --enable-flushdb, FLUSHDB empties the node; DBSIZE counts keys before and after."""
    r = flushable.client(decode_responses=True, **protocol_kwargs)
    assert r.flushdb() is True
    assert r.dbsize() == 0
    r.mset({"a": "1", "b": "2", "c": "3"})
    assert r.dbsize() == 3
    r.delete("a")
    assert r.dbsize() == 2
    assert r.flushdb() is True
    assert r.dbsize() == 0
    assert r.get("b") is None


def test_command_count_list_docs(r: redis.Redis) -> None:
    """COMMAND COUNT matches COMMAND LIST; COMMAND DOCS describes GET and SET with a summary."""
    count = r.command_count()
    names = r.command_list()
    assert count == len(names) >= 40
    assert {"get", "set", "scan", "info", "command"} <= set(names)

    # One string: redis-py's COMMAND reply parser is keyed on the first word and would
    # misparse DOCS; a "COMMAND DOCS" name is split on the wire and gets no parser.
    docs = r.execute_command("COMMAND DOCS", "GET", "SET")
    if isinstance(docs, list):  # RESP2: a flat name, doc, name, doc list
        docs = dict(zip(docs[::2], docs[1::2], strict=True))
    assert set(docs) == {"get", "set"}
    get_doc = docs["get"]
    if isinstance(get_doc, list):
        get_doc = dict(zip(get_doc[::2], get_doc[1::2], strict=True))
    assert get_doc["summary"]


def test_client_setname_getname_id(shared: Node, protocol_kwargs: dict[str, int]) -> None:
    """CLIENT SETNAME/GETNAME round-trip per connection; CLIENT ID differs between connections."""
    one = shared.client(decode_responses=True, single_connection_client=True, **protocol_kwargs)
    two = shared.client(decode_responses=True, single_connection_client=True, **protocol_kwargs)
    assert one.client_getname() is None
    assert one.client_setname("tester-1") is True
    assert one.client_getname() == "tester-1"
    assert two.client_getname() is None
    id_one, id_two = one.client_id(), two.client_id()
    assert isinstance(id_one, int) and isinstance(id_two, int)
    assert id_one != id_two
    with pytest.raises(ResponseError):
        one.client_setname("has space")
    assert one.client_getname() == "tester-1"


def test_select(r: redis.Redis) -> None:
    """SELECT 0 is accepted; SELECT 1 is an error (one keyspace) and the connection still works."""
    assert r.execute_command("SELECT", 0) in (True, "OK")
    with pytest.raises(ResponseError, match="out of range"):
        r.execute_command("SELECT", 1)
    assert r.ping() is True


def test_config_get(r: redis.Redis) -> None:
    """CONFIG GET answers a dict; proto-max-bulk-len reflects --max-value-bytes; SET is refused."""
    config = r.config_get("*")
    assert config["proto-max-bulk-len"] == str(MAX_VALUE)
    assert config["appendonly"] == "yes"
    assert config["databases"] == "1"
    assert r.config_get("maxclients") == {"maxclients": "10000"}
    with pytest.raises(ResponseError, match="CONFIG SET is not supported"):
        r.config_set("maxclients", "5")


def test_pipeline_without_transaction_100_commands(r: redis.Redis, key: Callable[[str], str]) -> None:
    """A non-transactional pipeline of 100 commands gets 100 replies in order."""
    pipe = r.pipeline(transaction=False)
    expected: list[object] = []
    for i in range(50):
        pipe.set(key(f"p{i}"), f"v{i}")
        expected.append(True)
        pipe.get(key(f"p{i}"))
        expected.append(f"v{i}")
    assert pipe.execute() == expected


def test_default_pipeline_transaction_gives_clear_error(r: redis.Redis, key: Callable[[str], str]) -> None:
    """pipeline() (MULTI/EXEC) fails with an error naming transactions and the fix.

    The connection stays usable afterwards.
    """
    pipe = r.pipeline()
    pipe.set(key(), "v")
    pipe.get(key())
    with pytest.raises(ResponseError) as caught:
        pipe.execute()
    message = str(caught.value)
    assert "transaction" in message.lower()
    assert "transaction=False" in message
    assert r.ping() is True


def test_refused_transaction_applies_none_of_its_commands(
    r: redis.Redis, key: Callable[[str], str]
) -> None:
    """When pipeline() raises because transactions are refused, none of its commands took
    effect: a caller who sees the exception and retries must not double-apply an INCR.
    Fails if the commands queued between the refused MULTI and EXEC still run.
    """
    counter, written = key("counter"), key("written")
    pipe = r.pipeline()
    pipe.incr(counter)
    pipe.set(written, "v")
    with pytest.raises(ResponseError):
        pipe.execute()
    assert r.get(counter) is None
    assert r.exists(written) == 0


def test_binary_safe_keys_and_values(rb: redis.Redis, key: Callable[[str], str]) -> None:
    """Every byte value 0-255 survives in keys and values, including CR, LF, NUL and space."""
    all_bytes = bytes(range(256))
    prefix = key("bin").encode() + b"\x00\r\n "
    rb.set(prefix + all_bytes, all_bytes * 3)
    assert rb.get(prefix + all_bytes) == all_bytes * 3

    pipe = rb.pipeline(transaction=False)
    for i in range(256):
        pipe.set(prefix + bytes([i]), bytes([i]) * (i + 1))
    pipe.execute()
    pipe = rb.pipeline(transaction=False)
    for i in range(256):
        pipe.get(prefix + bytes([i]))
    assert pipe.execute() == [bytes([i]) * (i + 1) for i in range(256)]
    assert rb.exists(prefix + b"\r", prefix + b"\n", prefix + b" ") == 3
    assert rb.strlen(prefix + b"\xff") == 256


def test_unknown_command_then_connection_still_works(r: redis.Redis) -> None:
    """An unknown command gets Redis's 'unknown command' error; the same connection then works."""
    with pytest.raises(ResponseError, match="unknown command 'NOSUCHCMD'"):
        r.execute_command("NOSUCHCMD", "a", "b")
    assert r.ping() is True
    assert r.echo("still here") == "still here"


def test_wrong_arity(r: redis.Redis) -> None:
    """Too few or too many arguments get Redis's wrong-number-of-arguments error."""
    with pytest.raises(ResponseError, match="wrong number of arguments for 'get' command"):
        r.execute_command("GET")
    with pytest.raises(ResponseError, match="wrong number of arguments for 'get' command"):
        r.execute_command("GET", "a", "b")
    with pytest.raises(ResponseError, match="wrong number of arguments for 'set' command"):
        r.execute_command("SET", "a")
    assert r.ping() is True


def test_value_over_limit_refused_and_connection_survives(
    r: redis.Redis, key: Callable[[str], str]
) -> None:
    """A value over --max-value-bytes is refused with an error naming the limit; nothing is
    written and the same connection keeps working. A value exactly at the limit is accepted.
    """
    k = key()
    with pytest.raises(ResponseError, match="--max-value-bytes") as caught:
        r.set(k, "x" * (MAX_VALUE + 1))
    assert str(MAX_VALUE) in str(caught.value)
    assert r.exists(k) == 0
    assert r.ping() is True
    assert r.set(k, "x" * MAX_VALUE) is True
    assert r.strlen(k) == MAX_VALUE
    with pytest.raises(ResponseError, match="--max-value-bytes"):
        r.append(k, "y")
    assert r.strlen(k) == MAX_VALUE


def test_expiry_survives_restart(node: Node) -> None:
    """Expiry is stored with the key: after a restart the absolute expiry time is unchanged,
    the TTL keeps counting down (not reset), and a short-lived key is gone once it expires.
    """
    r = node.client()
    r.set("long", "v", ex=1000)
    r.set("short", "v", px=2000)
    expire_at = r.expiretime("long")
    pttl_before = r.pttl("long")
    assert 0 < pttl_before <= 1_000_000

    node.restart()
    r = node.client()
    assert r.get("long") == b"v"
    assert r.expiretime("long") == expire_at
    assert 0 < r.pttl("long") < pttl_before

    deadline = time.monotonic() + 15
    while r.get("short") is not None:
        assert time.monotonic() < deadline, "key set with PX 2000 still there 15 s later"
        time.sleep(0.05)
    assert r.ttl("short") == -2
    assert r.get("long") == b"v"
