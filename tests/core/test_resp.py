"""Tests for twistkv.core.resp: request parsing (Redis-exact, every lane) and reply encoding.

The parser has three lanes (hiredis windows, a split lane for small reads, and the exact state
machine); the property tests force each lane and compare it with ``ReferenceParser``, an
independent, deliberately naive transliteration of Redis 7.0's networking.c. Expected Redis
behaviour in the example tables was observed on redis-server 7.0.15.
"""

from __future__ import annotations

import io
import math
import tracemalloc
from collections import Counter, OrderedDict, namedtuple
from enum import IntEnum
from itertools import pairwise
from typing import Any

import hiredis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis._parsers import _RESP2Parser, _RESP3Parser
from redis.exceptions import ResponseError

from twistkv.core import resp
from twistkv.core.resp import (
    NULL_ARRAY,
    OK,
    PONG,
    QUEUED,
    Error,
    RequestParser,
    RespProtocolError,
    SimpleString,
    Verbatim,
    encode,
    encode_into,
    encoder_for,
)

# ---------------------------------------------------------------------------------------------
# The reference: Redis's processInlineBuffer / processMultibulkBuffer / sdssplitargs / string2ll,
# re-run over the whole stream on every call. Same deterministic limit rule as the parser: a
# line's terminator must be among the first max_inline_len + 1 pending bytes.


def ref_string2ll(s: bytes) -> int | None:
    """util.c string2ll, digit by digit."""
    if not s or len(s) >= 21:
        return None
    if s == b"0":
        return 0
    p, negative = 0, False
    if s[0] == ord("-"):
        negative, p = True, 1
        if p == len(s):
            return None
    if not ord("1") <= s[p] <= ord("9"):
        return None
    v = s[p] - ord("0")
    p += 1
    while p < len(s) and ord("0") <= s[p] <= ord("9"):
        v = v * 10 + s[p] - ord("0")
        p += 1
    if p < len(s) or v >= 2**64:
        return None
    if negative:
        return -v if v <= 2**63 else None
    return v if v < 2**63 else None


def ref_splitargs(line: bytes) -> list[bytes] | None:
    """sds.c sdssplitargs over a NUL-terminated copy, pointer arithmetic and all."""
    s = line + b"\0"
    space = b" \t\n\v\f\r"
    hexdigits = b"0123456789abcdefABCDEF"
    p, out = 0, []
    while True:
        while s[p] and s[p] in space:
            p += 1
        if not s[p]:
            return out
        inq = insq = done = False
        current = b""
        while not done:
            c = s[p]
            if inq:
                if c == ord("\\") and s[p + 1] == ord("x") and s[p + 2] and s[p + 2] in hexdigits \
                        and s[p + 3] and s[p + 3] in hexdigits:
                    current += bytes([int(s[p + 2 : p + 4], 16)])
                    p += 3
                elif c == ord("\\") and s[p + 1]:
                    p += 1
                    current += {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t",
                                ord("b"): b"\b", ord("a"): b"\a"}.get(s[p], bytes([s[p]]))
                elif c == ord('"'):
                    if s[p + 1] and s[p + 1] not in space:
                        return None
                    done = True
                elif not c:
                    return None
                else:
                    current += bytes([c])
            elif insq:
                if c == ord("\\") and s[p + 1] == ord("'"):
                    p += 1
                    current += b"'"
                elif c == ord("'"):
                    if s[p + 1] and s[p + 1] not in space:
                        return None
                    done = True
                elif not c:
                    return None
                else:
                    current += bytes([c])
            elif c in b" \n\r\t\0":
                done = True
            elif c == ord('"'):
                inq = True
            elif c == ord("'"):
                insq = True
            else:
                current += bytes([c])
            if s[p]:
                p += 1
        out.append(current)


class ReferenceParser:
    """Redis 7.0's request parsing, naively: no state, no speed, just the C logic."""

    def __init__(
        self,
        max_bulk_len: int = resp.DEFAULT_MAX_BULK_LEN,
        max_multibulk_len: int = resp.DEFAULT_MAX_MULTIBULK_LEN,
        max_inline_len: int = resp.DEFAULT_MAX_INLINE_LEN,
    ) -> None:
        self.max_bulk_len = max_bulk_len
        self.max_multibulk_len = max_multibulk_len
        self.max_inline_len = max_inline_len

    def parse(self, buf: bytes) -> tuple[list[list[bytes]], str | None]:
        """All commands of ``buf``, and the protocol error that ends it (None: no error)."""
        commands: list[list[bytes]] = []
        pos = 0
        try:
            while pos < len(buf):
                step = self._multibulk(buf, pos) if buf[pos] == ord("*") else self._inline(buf, pos)
                if step is None:
                    break
                argv, pos = step
                if argv:
                    commands.append(argv)
        except RespProtocolError as exc:
            return commands, str(exc)
        return commands, None

    def _strchr(self, buf: bytes, pos: int, char: int, too_big: str) -> int | None:
        """C strchr from pos (stops at NUL), within the deterministic too-big rule."""
        for i in range(pos, min(len(buf), pos + self.max_inline_len + 1)):
            if buf[i] == char:
                return i
            if buf[i] == 0:
                break
        if len(buf) - pos > self.max_inline_len:
            raise RespProtocolError(f"Protocol error: too big {too_big}")
        return None

    def _inline(self, buf: bytes, pos: int) -> tuple[list[bytes], int] | None:
        newline = self._strchr(buf, pos, ord("\n"), "inline request")
        if newline is None:
            return None
        end = newline - 1 if newline != pos and buf[newline - 1] == ord("\r") else newline
        argv = ref_splitargs(buf[pos:end])
        if argv is None:
            raise RespProtocolError("Protocol error: unbalanced quotes in request")
        return argv, newline + 1

    def _multibulk(self, buf: bytes, pos: int) -> tuple[list[bytes], int] | None:
        newline = self._strchr(buf, pos, ord("\r"), "mbulk count string")
        if newline is None or newline > len(buf) - 2:
            return None
        count = ref_string2ll(buf[pos + 1 : newline])
        if count is None or count > self.max_multibulk_len:
            raise RespProtocolError("Protocol error: invalid multibulk length")
        pos = newline + 2
        args: list[bytes] = []
        for _ in range(max(count, 0)):
            newline = self._strchr(buf, pos, ord("\r"), "bulk count string")
            if newline is None or newline > len(buf) - 2:
                return None
            if buf[pos] != ord("$"):
                got = " " if buf[pos] in b"\r\n" else bytes([buf[pos]]).decode("utf-8", "surrogateescape")
                raise RespProtocolError(f"Protocol error: expected '$', got '{got}'")
            size = ref_string2ll(buf[pos + 1 : newline])
            if size is None or size < 0 or size > self.max_bulk_len:
                raise RespProtocolError("Protocol error: invalid bulk length")
            pos = newline + 2
            if len(buf) - pos < size + 2:
                return None
            args.append(buf[pos : pos + size])
            pos += size + 2
        return args, pos


# ---------------------------------------------------------------------------------------------
# Driving the parser, lane by lane

LANES = ("auto", "hiredis", "hiredis-narrow", "split", "exact")


def run_parser(
    stream: bytes, cuts: list[int] | None = None, lane: str = "auto", **limits: int
) -> tuple[list[list[bytes]], str | None]:
    """Feed ``stream`` cut at ``cuts`` through one lane; return its commands and error."""
    old = resp._HIREDIS_MIN
    resp._HIREDIS_MIN = {"hiredis": 0, "hiredis-narrow": 0, "split": 1 << 40}.get(lane, old)
    try:
        parser = RequestParser(**limits)
        if lane == "hiredis-narrow":  # windows far smaller than commands: partial frames galore
            parser._window = min(parser._window, 40)
        elif lane == "exact":
            parser._fast_ok = parser._split_ok = False
        commands: list[list[bytes]] = []
        bounds = [0, *sorted(set(cuts or ())), len(stream)]
        try:
            for start, end in pairwise(bounds):
                parser.feed(stream[start:end])
                while batch := parser.pop_commands():
                    commands.extend(batch)
        except RespProtocolError as exc:
            return commands, str(exc)
        return commands, None
    finally:
        resp._HIREDIS_MIN = old


def multibulk(args: list[bytes]) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)


def inline(args: list[bytes]) -> bytes:
    """An inline line that sdssplitargs turns back into ``args``, whatever their bytes."""
    words = [
        a if a.isalnum() and a.isascii() else b'"' + b"".join(b"\\x%02x" % c for c in a) + b'"'
        for a in args
    ]
    return b" ".join(words) + b"\r\n"


arguments = st.lists(st.binary(max_size=12), min_size=1, max_size=5)
frames = st.one_of(
    st.builds(lambda a: ([a], multibulk(a)), arguments),
    st.builds(lambda a: ([a], inline(a)), arguments),
    st.sampled_from([([], b"*0\r\n"), ([], b"*-1\r\n"), ([], b"\r\n"), ([], b"  \n")]),
)


@st.composite
def valid_streams(draw: st.DrawFn) -> tuple[list[list[bytes]], bytes, list[int]]:
    parts = draw(st.lists(frames, max_size=12))
    stream = b"".join(wire for _, wire in parts)
    expected = [cmd for cmds, _ in parts for cmd in cmds]
    cuts = draw(st.lists(st.integers(0, len(stream)), max_size=6))
    return expected, stream, cuts


# Protocol-shaped noise: finds the edge cases that uniform random bytes almost never hit.
TOKENS = [b"*", b"$", b"\r\n", b"\r", b"\n", b"0", b"1", b"2", b"-", b"+", b":", b"~", b">",
          b"|", b"%", b"=", b"(", b"_", b"#", b",", b"\0", b"9", b"x", b'"', b"'", b"\\", b" ",
          b"*1\r\n", b"$1\r\n", b"*2\r\n$3\r\nGET\r\n", b"PING\r\n"]
noise = st.lists(st.sampled_from(TOKENS), max_size=40).map(b"".join)


@st.composite
def mutated_streams(draw: st.DrawFn) -> bytes:
    _, stream, _ = draw(valid_streams())
    data = bytearray(stream)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
        token = draw(st.sampled_from(TOKENS))
        if kind == "replace":
            data[at : at + len(token)] = token
        elif kind == "insert":
            data[at:at] = token
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 3))]
        else:
            del data[at:]
    return bytes(data)


# ---------------------------------------------------------------------------------------------
# Parser: properties


@settings(max_examples=150, deadline=None)
@given(valid_streams(), st.sampled_from(LANES))
def test_valid_streams_parse_to_their_commands_in_any_chunking(case, lane):
    """Any mix of multibulk and inline commands, cut anywhere, comes out exactly, in order,
    in every lane; fails if a lane loses, splits or reorders a command at a chunk edge."""
    expected, stream, cuts = case
    assert run_parser(stream, cuts, lane) == (expected, None)
    assert ReferenceParser().parse(stream) == (expected, None)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=200), noise, mutated_streams()), st.data())
def test_any_bytes_agree_with_reference_and_only_raise_protocol_errors(stream, data):
    """Garbage, protocol-shaped noise and mutated valid streams give, in every lane and
    chunking, the reference's commands and error message; RespProtocolError is the only
    exception (run_parser lets any other escape and fail the test)."""
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=5))
    lane = data.draw(st.sampled_from(LANES))
    assert run_parser(stream, cuts, lane) == ReferenceParser().parse(stream)


@settings(max_examples=100, deadline=None)
@given(
    st.one_of(noise, mutated_streams()),
    st.data(),
    st.integers(0, 12),
    st.integers(0, 4),
    st.integers(4, 24),
)
def test_limits_agree_with_reference(stream, data, max_bulk, max_multibulk, max_inline):
    """With tiny limits, every lane refuses exactly where the reference does, with the
    same message, whatever the chunking: fails if a lane checks a limit late or differently."""
    limits = dict(max_bulk_len=max_bulk, max_multibulk_len=max_multibulk, max_inline_len=max_inline)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=5))
    lane = data.draw(st.sampled_from(LANES))
    assert run_parser(stream, cuts, lane, **limits) == ReferenceParser(**limits).parse(stream)


@settings(max_examples=60, deadline=None)
@given(st.lists(arguments, min_size=1, max_size=60), st.data())
def test_pipelines_through_hiredis_windows(commands, data):
    """Long pipelines (many hiredis windows, partial frames at window and chunk edges) parse
    exactly; fails if the fast path drops or duplicates the frame that straddles an edge."""
    stream = b"".join(map(multibulk, commands))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))
    for lane in ("auto", "hiredis", "hiredis-narrow"):
        assert run_parser(stream, cuts, lane) == (commands, None)


# ---------------------------------------------------------------------------------------------
# Parser: Redis behaviour, by example

REDIS_CASES = [
    # (stream, commands, error) as redis-server 7.0.15 treats them
    (b"*1\r\n$4\r\nPING\r\nGET x\r\n", [[b"PING"], [b"GET", b"x"]], None),
    (b"*1\rX$4\rXPINGxx", [[b"PING"]], None),  # byte after \r and after data: unchecked
    (b"*1\r\n$4\r\nPINGxx*1\r\n$4\r\nPING\r\n", [[b"PING"], [b"PING"]], None),
    (b"*-1\r\n*0\r\n*-5\r\nPING\r\n", [[b"PING"]], None),  # empty multibulks are skipped
    (b"\r\n\n   \nPING\r\n", [[b"PING"]], None),  # so are blank lines
    (b"PING\r\r\n", [[b"PING"]], None),
    (b"*1\r\n$4\r\nPING\r\n~1\r\n", [[b"PING"], [b"~1"]], None),  # not '*': inline
    # RESP3 forms that hiredis would parse as a command or an argument: Redis does not.
    (b"*1\r\n$4\r\nPING\r\n~1\r\n$4\r\nPING\r\n", [[b"PING"], [b"~1"], [b"$4"], [b"PING"]], None),
    (b"*1\r\n$4\r\nPING\r\n>1\r\n$4\r\nPING\r\n", [[b"PING"], [b">1"], [b"$4"], [b"PING"]], None),
    (b"*1\r\n$4\r\nPING\r\n|1\r\n$4\r\nPING\r\n", [[b"PING"], [b"|1"], [b"$4"], [b"PING"]], None),
    (b"*1\r\n$1\r\nX\r\n%1\r\n$1\r\nk\r\n$1\r\nv\r\n",
     [[b"X"], [b"%1"], [b"$1"], [b"k"], [b"$1"], [b"v"]], None),
    (b"*2\r\n$4\r\nECHO\r\n=8\r\ntxt:abcd\r\n", [], "Protocol error: expected '$', got '='"),
    (b"*2\r\n$4\r\nECHO\r\n(123\r\n", [], "Protocol error: expected '$', got '('"),
    (b"*2\r\n$4\r\nECHO\r\n:1\r\n", [], "Protocol error: expected '$', got ':'"),
    (b"*1\r\n+PING\r\n", [], "Protocol error: expected '$', got '+'"),
    (b"*1\r\nXY\r\n", [], "Protocol error: expected '$', got 'X'"),
    (b"*1\r\n\r\n", [], "Protocol error: expected '$', got ' '"),
    (b"*1\r\nX", [], None),  # waits for the '\r' before looking at the type byte
    (b"*1\r\n$-1\r\n", [], "Protocol error: invalid bulk length"),
    (b"*01\r\n$4\r\nPING\r\n", [], "Protocol error: invalid multibulk length"),
    (b"*1 \r\n$4\r\nPING\r\n", [], "Protocol error: invalid multibulk length"),
    (b"*2147483648\r\n", [], "Protocol error: invalid multibulk length"),
    (b"*1\r\n$536870913\r\n", [], "Protocol error: invalid bulk length"),
    (b"\0PING\r\n", [], None),  # strchr stops at NUL: the line never ends
    (b'EVAL "return ARGV" 0 a\0b\r\n', [], None),
    (b'a\vb \vc\r\n', [[b"a\vb", b"c"]], None),  # \v separates only as leading blank
    (b'X "a\\x41\\xZZ\\n" \'it\\\'s\\n\'\r\n', [[b"X", b"aAxZZ\n", b"it's\\n"]], None),
    (b'X "ab"\vcd\r\n', [[b"X", b"ab", b"cd"]], None),
    (b'X ab"cd ef"gh\r\n', [], "Protocol error: unbalanced quotes in request"),
    (b'X "ab"cd\r\n', [], "Protocol error: unbalanced quotes in request"),
    (b"X 'ab'\"cd\"\r\n", [], "Protocol error: unbalanced quotes in request"),
    (b'X "\\\r\n', [], "Protocol error: unbalanced quotes in request"),
    (b"X \xff\xfe\r\n", [[b"X", b"\xff\xfe"]], None),
]


@pytest.mark.parametrize("lane", LANES)
@pytest.mark.parametrize(("stream", "commands", "error"), REDIS_CASES)
def test_redis_examples(stream, commands, error, lane):
    """Each lane reproduces what redis-server 7.0.15 did with these bytes; fails on any drift
    from Redis's quirks (unchecked CRLF bytes, NUL stalls, sdssplitargs rules, wording)."""
    assert run_parser(stream, lane=lane) == (commands, error)
    assert ReferenceParser().parse(stream) == (commands, error)


@pytest.mark.parametrize("lane", LANES)
def test_binary_safe_arguments(lane):
    """Arguments holding every byte value, CRLFs and NULs come back unchanged in every lane."""
    args = [bytes(range(256)), b"\r\n", b"\0\0", b"", b"*1\r\n$1\r\nx\r\n"]
    stream = multibulk(args) * 5
    for cuts in ([], list(range(len(stream)))):
        assert run_parser(stream, cuts, lane) == ([args] * 5, None)


@pytest.mark.parametrize(
    ("limits", "stream", "error"),
    [
        ({"max_bulk_len": 10}, b"*1\r\n$10\r\n0123456789\r\n", None),
        ({"max_bulk_len": 10}, b"*1\r\n$11\r\n", "Protocol error: invalid bulk length"),
        ({"max_multibulk_len": 3}, multibulk([b"a"] * 3), None),
        ({"max_multibulk_len": 3}, b"*4\r\n", "Protocol error: invalid multibulk length"),
        ({"max_inline_len": 16}, b"x" * 16 + b"\n", None),
        ({"max_inline_len": 16}, b"x" * 17, "Protocol error: too big inline request"),
        ({"max_inline_len": 16}, b"x" * 16, None),
        ({"max_inline_len": 16}, b"*" + b"1" * 16, "Protocol error: too big mbulk count string"),
        ({"max_inline_len": 16}, b"*" + b"1" * 15, None),
        ({"max_inline_len": 16}, b"*1\r\n$" + b"1" * 16, "Protocol error: too big bulk count string"),
        ({}, b"*99999999999\r\n", "Protocol error: invalid multibulk length"),
        ({}, b"*1\r\n$99999999999\r\n", "Protocol error: invalid bulk length"),
        ({}, b"x" * 65537, "Protocol error: too big inline request"),  # Redis's 64 KiB
    ],
)
def test_limits_are_checked_on_headers(limits, stream, error):
    """Limits fire on the header (no need to send the declared bytes), byte-for-byte at the
    boundary, even when the input arrives one byte at a time; fails on an off-by-one."""
    for cuts in ([], list(range(len(stream)))):
        commands, got = run_parser(stream, cuts, **limits)
        assert got == error


def test_query_buffer_limit():
    """Unparsed input beyond max_buffer is refused (Redis's client-query-buffer-limit), while
    the same bytes pass when they complete a command within one feed."""
    parser = RequestParser(max_buffer=100)
    parser.feed(b"*1\r\n$200\r\n" + b"x" * 50)
    assert parser.next_command() is None
    parser.feed(b"x" * 60)
    with pytest.raises(RespProtocolError, match="query buffer limit"):
        parser.next_command()
    parser = RequestParser(max_buffer=100)
    parser.feed(multibulk([b"x" * 200]))
    assert parser.next_command() == [b"x" * 200]


@pytest.mark.parametrize(
    "bomb",
    [b"*1000000\r\n", b"*2\r\n$3\r\nGET\r\n*999999\r\n", b"*2\r\n$3\r\nGET\r\n~999999\r\n",
     b"*2\r\n$3\r\nGET\r\n>999999\r\n", b"*2\r\n$3\r\nGET\r\n|999999\r\n",
     b"*2\r\n$3\r\nGET\r\n$999999999\r\n"],
)
def test_declared_sizes_allocate_nothing(bomb):
    """Headers declaring a million elements or a gigabyte, pipelined behind enough commands to
    take the hiredis lane, cost no memory: fails if hiredis gets to see the header (it would
    preallocate an 8-16 MB list) or if the parser preallocates itself."""
    stream = multibulk([b"SET", b"k", b"v"]) * 20 + bomb
    tracemalloc.start()
    try:
        commands, _ = run_parser(stream, lane="hiredis")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert commands == [[b"SET", b"k", b"v"]] * 20
    assert peak < 1_000_000


def test_commands_before_a_fault_are_handed_out_first():
    """Like Redis, the commands preceding a protocol error are returned before the error, which
    then repeats on every call, and later input is ignored."""
    parser = RequestParser()
    parser.feed(multibulk([b"SET", b"a", b"1"]) + b"PING\r\n" + b"*1\r\n+X\r\n")
    assert parser.pop_commands() == [[b"SET", b"a", b"1"], [b"PING"]]
    for _ in range(2):
        with pytest.raises(RespProtocolError):
            parser.pop_commands()
    parser.feed(b"PING\r\n")
    with pytest.raises(RespProtocolError):
        parser.next_command()


def test_next_command_and_pop_commands_interleave():
    """One-at-a-time and batch draining can be mixed without losing or repeating commands."""
    parser = RequestParser()
    parser.feed(b"".join(multibulk([b"N", b"%d" % i]) for i in range(10)))
    assert parser.next_command() == [b"N", b"0"]
    assert parser.next_command() == [b"N", b"1"]
    parser.feed(b"".join(multibulk([b"N", b"%d" % i]) for i in range(10, 12)))
    assert [c[1] for c in parser.pop_commands()] == [b"%d" % i for i in range(2, 12)]
    assert parser.pop_commands() == []
    assert parser.next_command() is None


def test_big_value_in_small_chunks_and_buffered():
    """A 300 KB value (larger than a hiredis window) arriving in 1 KB reads is parsed once,
    and ``buffered`` counts the bytes held meanwhile; fails on loss or a wrong count."""
    value = bytes(range(256)) * 1200
    stream = multibulk([b"SET", b"big", value]) + multibulk([b"GET", b"big"])
    parser = RequestParser()
    got = []
    for i in range(0, len(stream), 1024):
        parser.feed(stream[i : i + 1024])
        got.extend(parser.pop_commands())
        if i + 1024 < len(stream) - 20:
            assert 0 < parser.buffered <= i + 1024
    assert got == [[b"SET", b"big", value], [b"GET", b"big"]]
    assert parser.buffered == 0


def test_slow_drip_of_a_long_line():
    """A long inline line and a NUL-stalled line arriving a byte at a time give the same result
    as in one piece; fails if the resumable terminator search loses its place."""
    for stream in (b"SET k " + b"v" * 3000 + b"\r\n", b"SET k v\0" + b"w" * 70000):
        assert run_parser(stream, list(range(0, len(stream), 7))) == run_parser(stream)


# ---------------------------------------------------------------------------------------------
# Replies: exact bytes

RESP2_CASES = [
    (b"abc", b"$3\r\nabc\r\n"),
    (b"", b"$0\r\n\r\n"),
    (b"x" * 2000, b"$2000\r\n" + b"x" * 2000 + b"\r\n"),
    (bytearray(b"ab"), b"$2\r\nab\r\n"),
    (memoryview(b"ab"), b"$2\r\nab\r\n"),
    (OK, b"+OK\r\n"),
    (PONG, b"+PONG\r\n"),
    (QUEUED, b"+QUEUED\r\n"),
    (SimpleString("a\r\nb"), b"+a  b\r\n"),
    (Error("ERR unknown command 'foo'"), b"-ERR unknown command 'foo'\r\n"),
    (Error("ERR a\nb"), b"-ERR a b\r\n"),
    (Error(b"ERR \xff"), b"-ERR \xff\r\n"),
    (Error(b"ERR \xff".decode("utf-8", "surrogateescape")), b"-ERR \xff\r\n"),
    (0, b":0\r\n"),
    (-1, b":-1\r\n"),
    (123456789, b":123456789\r\n"),
    (2**63 - 1, b":9223372036854775807\r\n"),
    (2**64, b"$20\r\n18446744073709551616\r\n"),
    (True, b":1\r\n"),
    (False, b":0\r\n"),
    (None, b"$-1\r\n"),
    (NULL_ARRAY, b"*-1\r\n"),
    (1.0, b"$1\r\n1\r\n"),
    (2.5, b"$3\r\n2.5\r\n"),
    (0.1, b"$3\r\n0.1\r\n"),
    (float("inf"), b"$3\r\ninf\r\n"),
    (float("-inf"), b"$4\r\n-inf\r\n"),
    (float("nan"), b"$3\r\nnan\r\n"),
    ([], b"*0\r\n"),
    ([b"a", None, 1], b"*3\r\n$1\r\na\r\n$-1\r\n:1\r\n"),
    ((b"a", b"b"), b"*2\r\n$1\r\na\r\n$1\r\nb\r\n"),
    ({b"k": b"v"}, b"*2\r\n$1\r\nk\r\n$1\r\nv\r\n"),
    ({b"k"}, b"*1\r\n$1\r\nk\r\n"),
    (Verbatim("hi"), b"$2\r\nhi\r\n"),
]
RESP3_CASES = [
    (b"abc", b"$3\r\nabc\r\n"),
    (OK, b"+OK\r\n"),
    (None, b"_\r\n"),
    (NULL_ARRAY, b"_\r\n"),
    (True, b"#t\r\n"),
    (False, b"#f\r\n"),
    (7, b":7\r\n"),
    (-(2**70), b"(-1180591620717411303424\r\n"),
    (1.0, b",1\r\n"),
    (-0.5, b",-0.5\r\n"),
    (1e300, b",1e+300\r\n"),
    (float("inf"), b",inf\r\n"),
    (float("-inf"), b",-inf\r\n"),
    (float("nan"), b",nan\r\n"),
    ({b"k": [1, 2]}, b"%1\r\n$1\r\nk\r\n*2\r\n:1\r\n:2\r\n"),
    (frozenset([b"k"]), b"~1\r\n$1\r\nk\r\n"),
    (Verbatim("hi"), b"=6\r\ntxt:hi\r\n"),
    (Verbatim(b"# x", "mkd"), b"=7\r\nmkd:# x\r\n"),
    ([None, NULL_ARRAY], b"*2\r\n_\r\n_\r\n"),
]


@pytest.mark.parametrize(("value", "wire"), RESP2_CASES)
def test_resp2_encoding(value, wire):
    """Each reply kind has its exact RESP2 bytes (Redis's RESP2 forms for RESP3-only types)."""
    assert encode(value, 2) == wire
    parts: list[bytes] = []
    encode_into(parts, value, 2)
    assert b"".join(parts) == wire


@pytest.mark.parametrize(("value", "wire"), RESP3_CASES)
def test_resp3_encoding(value, wire):
    """Each reply kind has its exact RESP3 bytes (null, boolean, double, map, set, verbatim,
    big number)."""
    assert encode(value, 3) == wire


def test_subclasses_encode_as_their_base():
    """IntEnum, OrderedDict, namedtuple and bytes subclasses encode like their base types."""
    Color = IntEnum("Color", "RED")
    Pair = namedtuple("Pair", "a b")

    class Key(bytes):
        pass

    value = [Color.RED, OrderedDict([(b"k", Pair(b"a", Key(b"b")))])]
    assert encode(value, 3) == encode([1, {b"k": (b"a", b"b")}], 3)


@pytest.mark.parametrize("value", ["text", ["ok", "text"], {b"k": "v"}, object(), {1: object()}])
def test_unencodable_values_are_refused(value):
    """str (the handler must choose an encoding) and unknown types raise TypeError, also when
    nested; fails if text would be silently sent in some encoding."""
    for protocol in (2, 3):
        with pytest.raises(TypeError):
            encode(value, protocol)


def test_unknown_protocol_is_refused():
    """Only RESP2 and RESP3 exist."""
    with pytest.raises(ValueError):
        encoder_for(4)
    with pytest.raises(ValueError):
        Verbatim("x", fmt="text")


def test_nesting_depth_is_unlimited():
    """A reply nested 50 000 deep (far past the recursion limit) encodes iteratively."""
    value: Any = b"x"
    for _ in range(50_000):
        value = [value]
    assert encode(value, 3) == b"*1\r\n" * 50_000 + b"$1\r\nx\r\n"


def test_batch_encoding_concatenates():
    """encode_into appends each reply in order, so one join writes a whole batch."""
    parts: list[bytes] = []
    write = encoder_for(2)
    for value in (OK, b"v", [b"a", b"b"], 3):
        write(parts, value)
    assert b"".join(parts) == b"+OK\r\n$1\r\nv\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n:3\r\n"


# ---------------------------------------------------------------------------------------------
# Replies: wire-correct for two independent client parsers

keys = st.one_of(st.binary(max_size=8), st.integers(-(2**40), 2**40))
scalars = st.one_of(
    st.binary(max_size=30),
    st.binary(min_size=1024, max_size=1100),
    st.integers(-(2**70), 2**70),
    st.none(),
    st.booleans(),
    st.floats(),
    st.builds(SimpleString, st.text(max_size=20)),
    st.builds(Error, st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20)),
    st.builds(Verbatim, st.binary(max_size=20)),
    st.just(NULL_ARRAY),
)
replies = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.tuples(inner, inner),
        st.lists(st.binary(max_size=10), max_size=8),
        st.dictionaries(keys, inner, max_size=4),
        st.frozensets(keys, max_size=4),
    ),
    max_leaves=30,
)


class Unordered(list):
    """Expected elements of a set reply, in any order."""


class Text(float):
    """A float expected as RESP2 bulk text that parses back to exactly this value."""


class ErrorReply(bytes):
    """An error reply; hiredis keeps its message, redis-py maps it to a ResponseError."""


def expected(value: Any, protocol: int, reader: str) -> Any:
    """What a client parser ("hiredis" or "redis-py") should decode ``value`` to."""
    resp3 = protocol == 3
    if isinstance(value, SimpleString):
        return value.wire[1:-2]
    if isinstance(value, Error):
        return ErrorReply(value.wire[1:-2])
    if isinstance(value, Verbatim):
        return value.data
    if value is NULL_ARRAY:
        return None
    if isinstance(value, bool):
        return value if resp3 else int(value)
    if isinstance(value, int):
        if -(2**63) <= value < 2**63:
            return value
        return value if resp3 and reader == "redis-py" else str(value).encode()
    if isinstance(value, float):
        return value if resp3 else Text(value)
    if isinstance(value, (list, tuple)):
        return [expected(v, protocol, reader) for v in value]
    if isinstance(value, dict):
        if resp3:
            return {expected(k, 3, reader): expected(v, 3, reader) for k, v in value.items()}
        return [expected(x, 2, reader) for kv in value.items() for x in kv]
    if isinstance(value, frozenset):
        return Unordered(expected(v, protocol, reader) for v in value)
    return value


def same(decoded: Any, want: Any) -> bool:
    """Structural equality, NaN included."""
    if isinstance(want, Unordered):
        return isinstance(decoded, list) and Counter(decoded) == Counter(want)
    if isinstance(want, Text):
        return type(decoded) is bytes and same(float(decoded), float(want))
    if isinstance(want, ErrorReply):
        if isinstance(decoded, ResponseError):
            return True
        return isinstance(decoded, hiredis.ReplyError) and str(decoded).encode() == want
    if isinstance(want, float):
        return type(decoded) is float and (decoded == want or math.isnan(want) and math.isnan(decoded))
    if isinstance(want, list):
        return type(decoded) is list and len(decoded) == len(want) and all(map(same, decoded, want))
    if isinstance(want, dict):
        return type(decoded) is dict and decoded.keys() == want.keys() and all(
            same(decoded[k], want[k]) for k in want
        )
    return type(decoded) is type(want) and decoded == want


class WireBuffer:
    """The slice of redis-py's SocketBuffer that its parsers use, over bytes in memory."""

    def __init__(self, data: bytes) -> None:
        self._io = io.BytesIO(data)

    def readline(self, timeout: object = None) -> bytes:
        line = self._io.readline()
        assert line.endswith(b"\r\n")
        return line[:-2]

    def read(self, length: int, timeout: object = None) -> bytes:
        data = self._io.read(length + 2)
        assert data.endswith(b"\r\n")
        return data[:-2]

    def get_pos(self) -> int:
        return self._io.tell()

    def rewind(self, pos: int) -> None:
        self._io.seek(pos)

    def purge(self) -> None:
        pass

    def at_end(self) -> bool:
        return self._io.tell() == len(self._io.getvalue())


def decode_with_redis_py(wire: bytes, protocol: int) -> Any:
    parser = (_RESP3Parser if protocol == 3 else _RESP2Parser)(socket_read_size=65536)
    buffer = WireBuffer(wire)
    parser._buffer = buffer
    value = parser.read_response(disable_decoding=True)
    assert buffer.at_end()
    return value


def decode_with_hiredis(wire: bytes) -> Any:
    reader = hiredis.Reader()
    reader.feed(wire)
    value = reader.gets()
    assert reader.gets() is False and not reader.has_data()
    return value


@settings(max_examples=200, deadline=None)
@given(replies, st.sampled_from([2, 3]))
def test_replies_round_trip_through_client_parsers(value, protocol):
    """Any nested reply encodes to exactly one frame that hiredis and redis-py's own RESP2/
    RESP3 parsers decode to the intended value; fails on a wrong length, header or type."""
    wire = encode(value, protocol)
    assert same(decode_with_hiredis(wire), expected(value, protocol, "hiredis"))
    assert same(decode_with_redis_py(wire, protocol), expected(value, protocol, "redis-py"))


@given(st.lists(st.one_of(st.none(), st.binary(max_size=40), st.binary(min_size=1020, max_size=1100)),
                max_size=20),
       st.sampled_from([2, 3]))
def test_bulk_replies_encode_like_one_reply_each(values, protocol):
    """A run of GET replies in one buffer is byte for byte the replies encoded one by one,
    in both protocols (RESP2 and RESP3 nulls differ), values around the 1 KiB header table
    included."""
    assert resp.encode_bulk_replies(values, protocol) == b"".join(
        encode(v, protocol) for v in values)
