"""The client protocol codec: Redis RESP2/RESP3 requests in, replies out. Sans-IO.

Requests are parsed exactly as Redis 7.0 parses them (``processInlineBuffer`` and
``processMultibulkBuffer`` in ``networking.c``), because clients, proxies and fuzzers rely on
those exact rules, quirks included:

- a frame starting with ``*`` is a multibulk; anything else is an inline (telnet) line, split
  like ``sdssplitargs``; empty commands (``*0``, ``*-1``, blank lines) are skipped;
- a header line ends at the first ``\\r`` and the byte after it is skipped unchecked; the two
  bytes after bulk data are skipped unchecked; a NUL byte before a line terminator stalls the
  frame (Redis's ``strchr`` stops there) until the "too big" limit fires;
- limits are checked on headers, before anything is allocated.

Two deliberate, deterministic deviations, where Redis's outcome depends on TCP segmentation:
a line whose terminator is not within the first ``max_inline_len + 1`` pending bytes is always
"too big" (Redis accepts it if it arrived in a single read), and ``max_buffer`` is checked
after each ``feed``.

Speed: three lanes give the same results (the tests force each one against a naive
transliteration of the C code):

- *exact*: the Python state machine above, which everything can fall back to; canonical
  headers take a table-lookup shortcut that is provably the same decision.
- *split*: reads under ``_HIREDIS_MIN`` bytes (redis-benchmark -P 1): one ``bytes.split`` on
  CRLF; a frame is taken only if its tokens are exactly ``*n``, then n pairs ``$len``/data of
  that length, i.e. the bytes are the canonical encoding.
- *hiredis*: bigger reads, a window at a time. hiredis is unsafe on untrusted input as such:
  it preallocates aggregates (``*1000000000`` is an 8 GB list), has no nesting limit, accepts
  RESP3 types and non-``$`` arguments, and does not say how many bytes it consumed. So before
  hiredis sees a window, it is cut before any aggregate header of 100+ elements, any ``~``,
  ``>``, ``|`` or ``%`` header (a top-level one would pass for a command of the same size) and
  any verbatim ``=`` header (the one element kind longer than a canonical bulk). Afterwards,
  commands are kept only if all are non-empty lists of bytes, the reader is provably idle (a
  probe frame comes back alone) and, when the window holds a ``+`` or ``(`` (the element
  kinds shorter than a canonical bulk), the canonical size of the commands equals the bytes
  consumed. Together these prove that every frame was canonical: anything else goes to the
  exact lane.

Replies: handlers return plain Python values and :func:`encode_into` appends their wire form
for the connection's protocol to a list, so that the adapter writes a whole batch at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from itertools import chain, repeat

import hiredis

__all__ = [
    "DEFAULT_MAX_BUFFER",
    "DEFAULT_MAX_BULK_LEN",
    "DEFAULT_MAX_INLINE_LEN",
    "DEFAULT_MAX_MULTIBULK_LEN",
    "NULL_ARRAY",
    "NULL_ARRAY_RESP2",
    "NULL_BULK_RESP2",
    "NULL_RESP3",
    "OK",
    "PONG",
    "QUEUED",
    "Error",
    "NullArray",
    "RequestParser",
    "RespProtocolError",
    "SimpleString",
    "Verbatim",
    "encode",
    "encode_bulk_replies",
    "encode_into",
    "encode_into_resp2",
    "encode_into_resp3",
    "encoder_for",
]

DEFAULT_MAX_BULK_LEN = 512 * 1024 * 1024  # Redis proto-max-bulk-len
DEFAULT_MAX_MULTIBULK_LEN = 1024 * 1024  # Redis 6's limit; 7.0 allows INT_MAX
DEFAULT_MAX_INLINE_LEN = 64 * 1024  # Redis PROTO_INLINE_MAX_SIZE
DEFAULT_MAX_BUFFER = 1024 * 1024 * 1024  # Redis client-query-buffer-limit


class RespProtocolError(Exception):
    """The client sent bytes that Redis would reject; the connection must be closed.

    ``str(exc)`` is Redis's wording (``"Protocol error: ..."``); Redis replies with it prefixed
    by ``ERR``.
    """


_E_INLINE_BIG = "Protocol error: too big inline request"
_E_MBULK_BIG = "Protocol error: too big mbulk count string"
_E_BULK_BIG = "Protocol error: too big bulk count string"
_E_MBULK_LEN = "Protocol error: invalid multibulk length"
_E_BULK_LEN = "Protocol error: invalid bulk length"
_E_QUOTES = "Protocol error: unbalanced quotes in request"
_E_BUFFER = "Protocol error: client query buffer limit exceeded"


# ---------------------------------------------------------------------------------------------
# Request parsing helpers (the slow, exact path)

# Redis string2ll: "0", or an optional '-' then 1-19 digits without a leading zero, in int64.
_LL = re.compile(rb"0|-?[1-9][0-9]{0,18}")
_LL_MIN, _LL_MAX = -(2**63), 2**63 - 1


def _string2ll(raw: bytes | bytearray) -> int | None:
    """Parse a length like Redis's ``string2ll``: canonical decimal only, or None."""
    if _LL.fullmatch(raw) is None:
        return None
    value = int(raw)
    return value if _LL_MIN <= value <= _LL_MAX else None


_C_ISSPACE = frozenset(b" \t\n\v\f\r")  # C isspace() in the "C" locale
_TOKEN_END = frozenset(b" \n\r\t\0")  # what ends an unquoted token in sdssplitargs
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}
_NEEDS_SLOW_SPLIT = re.compile(rb"[\"'\v\f]")


def _split_args(line: bytes) -> list[bytes] | None:
    """Split an inline request like Redis's ``sdssplitargs``; None means unbalanced quotes.

    Without quotes, \\v or \\f (which sdssplitargs keeps inside tokens) this is exactly
    ``bytes.split()``; the character loop below is a transliteration of the C function,
    reading NUL past the end as C does.
    """
    if _NEEDS_SLOW_SPLIT.search(line) is None:
        return line.split()
    n = len(line)

    def at(j: int) -> int:
        return line[j] if j < n else 0

    out: list[bytes] = []
    i = 0
    while True:
        while i < n and line[i] in _C_ISSPACE:
            i += 1
        if i >= n:
            return out
        cur = bytearray()
        inq = insq = done = False
        while not done:
            c = at(i)
            if inq:
                if c == 0x5C and at(i + 1) == 0x78 and at(i + 2) in _HEX and at(i + 3) in _HEX:
                    cur.append(int(line[i + 2 : i + 4], 16))
                    i += 3
                elif c == 0x5C and at(i + 1):
                    i += 1
                    cur.append(_ESCAPES.get(line[i], line[i]))
                elif c == 0x22:
                    if at(i + 1) and at(i + 1) not in _C_ISSPACE:
                        return None
                    done = True
                elif not c:
                    return None
                else:
                    cur.append(c)
            elif insq:
                if c == 0x5C and at(i + 1) == 0x27:
                    i += 1
                    cur.append(0x27)
                elif c == 0x27:
                    if at(i + 1) and at(i + 1) not in _C_ISSPACE:
                        return None
                    done = True
                elif not c:
                    return None
                else:
                    cur.append(c)
            elif c in _TOKEN_END:
                done = True
            elif c == 0x22:
                inq = True
            elif c == 0x27:
                insq = True
            else:
                cur.append(c)
            if i < n:
                i += 1
        out.append(bytes(cur))


def _byte_for_message(b: int) -> str:
    """Render an offending byte as Redis does in "expected '$', got '%c'".

    Redis turns CR/LF into spaces; other bytes go out raw, which surrogateescape preserves
    through :class:`Error`'s encoding.
    """
    if b in (10, 13):
        return " "
    return bytes((b,)).decode("utf-8", "surrogateescape")


# ---------------------------------------------------------------------------------------------
# Fast path tables

_FAST_WINDOW = 64 * 1024  # bytes handed to hiredis at once: bounds its transient allocations
_PROBE = b"*0\r\n"
# Forms that hiredis must not parse (see the module docstring), found with memchr first because
# they are rare, then confirmed with a regex: aggregates that masquerade as a command of the
# same size or preallocate (~ > |), maps whose keys would pass for a command (%), and verbatim
# strings, the one element kind larger than its canonical bulk (=).
_SCREENS = (
    (b"~", re.compile(rb"~[-0-9]")),
    (b">", re.compile(rb">[-0-9]")),
    (b"|", re.compile(rb"\|[-0-9]")),
    (b"%", re.compile(rb"%(?:0|-1|[1-9][0-9]*)\r\n")),
    (b"=", re.compile(rb"=(?:-1|[1-9][0-9]*)\r\n")),
)
_BIG_ARRAY = re.compile(rb"\*[0-9]{3}")  # >= 100 elements: hiredis would preallocate them
# Canonical sizes: "*<n>\r\n" is 3 + digits(n); "$<len>\r\n<data>\r\n" is 5 + digits(len) + len.
_HEADER_SIZE = [3 + len(str(i)) for i in range(100)]
_ARG_SIZE = [5 + len(str(i)) + i for i in range(4096)]


def _screen(src: bytes | bytearray, pos: int, end: int) -> int:
    """Return how far from ``pos`` (up to ``end``) hiredis may parse ``src`` safely."""
    for char, form in _SCREENS:
        i = src.find(char, pos, end)
        while i >= 0:
            if form.match(src, i, end) is not None:
                end = i
                break
            i = src.find(char, i + 1, end)
    big = _BIG_ARRAY.search(src, pos, end)
    return end if big is None else big.start()


def _well_typed(cmds: list) -> bool:
    """True if every item is a non-empty list of bytes, in two C-level passes.

    ``all`` rejects falsy items (b"", None, 0, [], and ``*0``, which the slow path skips);
    ``join`` rejects every non-bytes element, and top-level scalars, which are not iterable
    or iterate to ints.
    """
    if not all(cmds):
        return False
    try:
        b"".join(chain.from_iterable(cmds))
    except TypeError:
        return False
    return True


def _canonical_size(cmds: list[list[bytes]]) -> int:
    """Bytes that well-typed ``cmds`` occupy as canonical multibulks."""
    try:
        return sum(map(_ARG_SIZE.__getitem__, map(len, chain.from_iterable(cmds)))) + sum(
            map(_HEADER_SIZE.__getitem__, map(len, cmds))
        )
    except IndexError:  # an argument of 4 KiB or more
        lens = list(map(len, chain.from_iterable(cmds)))
        return (
            sum(len(str(len(c))) + 3 for c in cmds)
            + sum(lens)
            + sum(len(str(size)) + 5 for size in lens)
        )


def _parse_prefix(src: bytes | bytearray, pos: int, end: int) -> list:
    """The items a fresh hiredis reader returns from src[pos:end] before it fails or stops."""
    reader = _new_reader()
    reader.feed(src, pos, end - pos)
    items: list = []
    try:
        while (item := reader.gets()) is not _NEED_MORE:
            items.append(item)
    except Exception:
        pass
    return items


def _shrinkable(src: bytes | bytearray, pos: int, end: int) -> bool:
    """Whether an element in src[pos:end] could be a '+' or '(' string, shorter than a bulk."""
    return src.find(b"+", pos, end) >= 0 or src.find(b"(", pos, end) >= 0


# gets() returns this, not False, when it needs more bytes: False == 0 == 0.0 are replies too.
_NEED_MORE = object()


def _new_reader() -> hiredis.Reader:
    return hiredis.Reader(notEnoughData=_NEED_MORE)


_HIREDIS_MIN = 192  # measured crossover: about four SET commands; see RequestParser._parse
# Canonical headers, for the exact path's fast lane.
_COUNTS = {b"*%d" % i: i for i in range(-1, 1024)}
_BULK_LENS = {b"$%d" % i: i for i in range(10000)}
_BULK_TOKENS = [b"$%d" % i for i in range(4096)]  # split lane: data of up to 4 KiB


class RequestParser:
    """Incremental parser of client requests; one per connection.

    Call :meth:`feed` with every chunk received, then take the commands, either in batches::

        parser.feed(data)
        while commands := parser.pop_commands():
            for command in commands: ...

    or one at a time with :meth:`next_command` until it returns None. A command is a non-empty
    ``list[bytes]``. When the stream turns invalid, the commands before the fault are still
    handed out, then the next call raises :class:`RespProtocolError`, as Redis executes them
    before closing the connection.
    """

    def __init__(
        self,
        max_bulk_len: int = DEFAULT_MAX_BULK_LEN,
        max_multibulk_len: int = DEFAULT_MAX_MULTIBULK_LEN,
        max_inline_len: int = DEFAULT_MAX_INLINE_LEN,
        max_buffer: int = DEFAULT_MAX_BUFFER,
    ) -> None:
        if min(max_bulk_len, max_multibulk_len, max_inline_len, max_buffer) < 0:
            raise ValueError("limits must be non-negative")
        self._max_bulk = max_bulk_len
        self._max_multibulk = max_multibulk_len
        self._max_inline = max_inline_len
        self._max_buffer = max_buffer
        # The fast path only proves element sizes below its window, and counts below 100.
        self._window = min(_FAST_WINDOW, max_bulk_len + 5)
        self._fast_ok = max_multibulk_len >= 99 and self._window > 5
        self._split_ok = max_bulk_len >= len(_BULK_TOKENS) - 1
        self._split_counts = {k: v for k, v in _COUNTS.items() if 0 < v <= max_multibulk_len}
        self._ready: list[list[bytes]] = []  # parsed commands; the first _taken are handed out
        self._taken = 0
        self._error: RespProtocolError | None = None
        self._buf = bytearray()  # received, not yet consumed
        self._reader: hiredis.Reader | None = None  # always idle between windows
        # The slow path's state for a multibulk in progress (Redis's multibulklen/bulklen).
        self._mb_left = 0
        self._bulk_len = -1
        self._args: list[bytes] = []
        self._args_size = 0
        # A line still waiting for its terminator: its stream offset, how many of its bytes
        # were searched (a slowly arriving long line is not rescanned), and whether a NUL
        # came first (Redis's strchr stops there, for good). _base: stream offset of _buf[0].
        self._base = 0
        self._scan_line = -1
        self._scanned = 0
        self._stalled = False

    # -- public API ---------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Take bytes received from the client and parse every complete command in them."""
        if self._error is not None or not data:
            return
        if type(data) is not bytes:
            data = bytes(data)
        buf = self._buf
        if buf:
            buf += data
            src: bytes | bytearray = buf
        else:
            src = data
        try:
            pos = self._parse(src)
            self._base += pos
            pending = len(src) - pos
            if pending + self._args_size > self._max_buffer:
                raise RespProtocolError(_E_BUFFER)
        except RespProtocolError as exc:
            self._error = exc
            self._buf = bytearray()
            return
        if src is buf:
            if pending == 0:
                buf.clear()
            elif pos:
                del buf[:pos]
        elif pending:
            buf += memoryview(data)[pos:]

    def pop_commands(self) -> list[list[bytes]]:
        """Return all complete commands, oldest first; an empty list if more bytes are needed.

        Raises RespProtocolError once the commands preceding a fault have been returned.
        """
        ready = self._ready
        taken = self._taken
        if taken < len(ready):
            self._ready = []
            self._taken = 0
            return ready[taken:] if taken else ready
        if self._error is not None:
            raise self._error
        return []

    def next_command(self) -> list[bytes] | None:
        """Return the next complete command, None if more bytes are needed.

        Raises RespProtocolError once the commands preceding a fault have been returned.
        """
        ready = self._ready
        taken = self._taken
        if taken < len(ready):
            self._taken = taken + 1
            return ready[taken]
        if taken:
            self._ready = []
            self._taken = 0
        if self._error is not None:
            raise self._error
        return None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet parsed into commands (CLIENT LIST's qbuf)."""
        return len(self._buf) + self._args_size

    # -- parsing ------------------------------------------------------------------------------

    def _parse(self, src: bytes | bytearray) -> int:
        """Consume complete frames of ``src``; return the position of the first unconsumed byte.

        ``fast_from`` keeps the fast path off until the slow path has passed a region that the
        fast path gave up on, so no byte is handed to hiredis more than twice (parse + verify).
        """
        n = len(src)
        pos = 0
        fast_from = 0
        while pos < n:
            # Below _HIREDIS_MIN bytes (one or two small commands per read, as with
            # redis-benchmark -P 1) the split lane beats hiredis plus its verification.
            if pos >= fast_from and not self._mb_left and src[pos] == 42:  # '*'
                if n - pos >= _HIREDIS_MIN and self._fast_ok:
                    pos, fast_from = self._fast(src, pos, n)
                    continue
                if self._split_ok and type(src) is bytes:
                    new = self._split(src, pos, n)
                    fast_from = n + 1  # whatever the split lane left is not canonical
                    if new > pos:
                        pos = new
                        continue
            new = self._slow_step(src, pos, n)
            if new < 0:  # needs more bytes
                return pos if new == -1 else -new - 2
            pos = new
        return pos

    def _split(self, src: bytes, pos: int, n: int) -> int:
        """Parse small canonical multibulks with one ``split``; return the position reached.

        A frame is taken only if its tokens are ``*<n>`` then n pairs ``$<len>``, data of
        exactly that length; then its bytes are exactly the canonical encoding, which Redis
        parses the same way. Data containing CRLF breaks the pairing and is left to the
        exact path, as is anything else.
        """
        toks = (src[pos:] if pos else src).split(b"\r\n")
        last = len(toks) - 1  # the bytes after the final CRLF: never a whole token
        counts = self._split_counts
        i = 0
        try:
            while i < last:
                count = counts.get(toks[i])
                if count is None:
                    break
                j = i + 1 + 2 * count
                if j > last:
                    break
                args = toks[i + 2 : j : 2]
                if toks[i + 1 : j : 2] != list(map(_BULK_TOKENS.__getitem__, map(len, args))):
                    break
                self._ready.append(args)
                i = j
        except IndexError:  # an argument longer than the table: not for this lane
            pass
        if i == last and not toks[last]:
            return n
        return pos + sum(map(len, toks[:i])) + 2 * i if i else pos

    def _fast(self, src: bytes | bytearray, pos: int, n: int) -> tuple[int, int]:
        """Parse one window of canonical multibulks with hiredis.

        Returns the new position and the position before which the fast path must not be
        retried. Whatever it cannot prove canonical is left to the slow path. The proof: after
        the screens, a well-typed command can only differ from canonical by '+' or '('
        elements, which are shorter than canonical; so consumed bytes == canonical size, or no
        '+'/'(' in them, means every frame was canonical.
        """
        end = _screen(src, pos, min(n, pos + self._window))
        if end == pos:
            return pos, pos + 1
        reader = self._reader
        if reader is None:
            reader = _new_reader()
        reader.feed(src, pos, end - pos)
        gets = reader.gets
        idle = False
        try:
            cmds = list(iter(gets, _NEED_MORE))
        except Exception:  # ProtocolError; TypeError for unhashable RESP3 map keys
            cmds = _parse_prefix(src, pos, end)  # the items before the fault
        else:
            try:
                reader.feed(_PROBE)
                probe = gets()
                # An idle reader returns the probe itself; a reader holding a partial frame
                # folds the probe into it, which can never give an empty list first.
                idle = type(probe) is list and not probe
            except Exception:
                pass
        if not cmds or not _well_typed(cmds):
            self._reader = reader if idle else None
            return pos, end
        if idle:
            self._reader = reader
            if _shrinkable(src, pos, end) and _canonical_size(cmds) != end - pos:
                return pos, end
            self._take(cmds)
            return end, end
        # A partial frame at the window end, or a frame hiredis rejected: keep the commands
        # before it if they provably end where their canonical size says.
        self._reader = None
        size = _canonical_size(cmds)
        if size > end - pos:
            return pos, end
        if _shrinkable(src, pos, pos + size):
            verify = _new_reader()
            verify.feed(src, pos, size)
            again: list = []
            try:
                while (item := verify.gets()) is not _NEED_MORE:
                    again.append(item)
                verify.feed(_PROBE)
                probe = verify.gets()
            except Exception:
                return pos, end
            if not (type(probe) is list and not probe and len(again) == len(cmds)):
                return pos, end
            # Same bytes, same parser: again == cmds, and it consumed exactly ``size``.
            self._reader = verify
        self._take(cmds)
        return pos + size, end

    def _take(self, cmds: list[list[bytes]]) -> None:
        """Queue a batch of commands, adopting the list when nothing is queued."""
        if self._taken == len(self._ready):
            self._ready = cmds
            self._taken = 0
        else:
            self._ready.extend(cmds)

    def _find_line(self, src: bytes | bytearray, pos: int, n: int, term: bytes, big: str) -> int:
        """Find a frame line's terminator as Redis's ``strchr`` does; -1 means wait for more.

        Raises ``big`` when more than max_inline_len bytes are pending without a terminator.
        """
        line = self._base + pos
        if line != self._scan_line:
            self._scan_line = line
            self._scanned = 0
            self._stalled = False
        if not self._stalled:
            limit = pos + self._max_inline + 1
            start = pos + self._scanned
            t = src.find(term, start, limit)
            if src.find(b"\0", start, limit if t < 0 else t) >= 0:
                self._stalled = True
            elif t >= 0:
                return t
            else:
                self._scanned = min(n, limit) - pos
        if n - pos > self._max_inline:
            raise RespProtocolError(big)
        return -1

    def _slow_step(self, src: bytes | bytearray, pos: int, n: int) -> int:
        """Advance the exact, Redis-mirroring state machine by at most one frame.

        Returns the new position after a frame, or ``-2 - p`` when it needs more bytes and
        has consumed up to ``p`` (a multibulk's parsed arguments are kept aside), or -1 when it
        consumed nothing. Canonical headers take a lane that looks the header text up in a
        table: the first '\r' within a few bytes, and a table hit, mean exactly what Redis's
        strchr + string2ll would find, since table entries hold no NUL.
        """
        left = self._mb_left
        if not left:
            if src[pos] != 42:  # not '*': an inline command
                return self._inline(src, pos, n)
            cr = src.find(b"\r", pos, pos + 6)
            count = _COUNTS.get(bytes(src[pos:cr])) if cr > 0 else None
            if count is None or cr + 1 >= n:
                cr = self._find_line(src, pos, n, b"\r", _E_MBULK_BIG)
                if cr < 0 or cr + 1 >= n:  # Redis also wants the byte after '\r'
                    if cr >= 0:
                        self._scanned = cr - pos
                    return -1
                count = _string2ll(src[pos + 1 : cr])
                if count is None:
                    raise RespProtocolError(_E_MBULK_LEN)
            if count > self._max_multibulk:
                raise RespProtocolError(_E_MBULK_LEN)
            pos = cr + 2
            if count <= 0:
                return pos
            left = count
            args: list[bytes] = []
            size = -1
        else:
            args = self._args
            size = self._bulk_len
        first = len(args)
        max_bulk = self._max_bulk
        while True:
            if size < 0:
                cr = src.find(b"\r", pos, pos + 7)
                size = _BULK_LENS.get(bytes(src[pos:cr])) if cr > 0 else None
                if size is None or cr + 1 >= n:
                    cr = self._find_line(src, pos, n, b"\r", _E_BULK_BIG)
                    if cr < 0 or cr + 1 >= n:
                        if cr >= 0:
                            self._scanned = cr - pos
                        size = -1
                        break
                    if src[pos] != 36:  # '$'
                        got = _byte_for_message(src[pos])
                        raise RespProtocolError(f"Protocol error: expected '$', got '{got}'")
                    size = _string2ll(src[pos + 1 : cr])
                    if size is None or size < 0:
                        raise RespProtocolError(_E_BULK_LEN)
                if size > max_bulk:
                    raise RespProtocolError(_E_BULK_LEN)
                pos = cr + 2
            if n - pos < size + 2:
                break
            if size < 65536:
                args.append(bytes(src[pos : pos + size]))
            else:  # one copy, not two, for big values
                with memoryview(src) as view:
                    args.append(view[pos : pos + size].tobytes())
            pos += size + 2
            size = -1
            left -= 1
            if not left:
                if self._mb_left:
                    self._mb_left = 0
                    self._bulk_len = -1
                    self._args = []
                    self._args_size = 0
                self._ready.append(args)
                return pos
        # Needs more bytes: keep the arguments parsed so far, drop their bytes.
        self._mb_left = left
        self._bulk_len = size
        self._args = args
        self._args_size += sum(map(len, args[first:]))
        return -2 - pos

    def _inline(self, src: bytes | bytearray, pos: int, n: int) -> int:
        """Parse one inline (telnet) command line, as Redis's processInlineBuffer."""
        nl = self._find_line(src, pos, n, b"\n", _E_INLINE_BIG)
        if nl < 0:
            return -1
        line = src[pos : nl - 1 if nl > pos and src[nl - 1] == 13 else nl]
        argv = _split_args(bytes(line))
        if argv is None:
            raise RespProtocolError(_E_QUOTES)
        if argv:
            self._ready.append(argv)
        return nl + 1


# ---------------------------------------------------------------------------------------------
# Replies


def _line(text: str | bytes) -> bytes:
    """Encode the text of a one-line reply; CR/LF become spaces as in Redis's error replies."""
    raw = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else bytes(text)
    if b"\r" in raw or b"\n" in raw:
        raw = raw.replace(b"\r", b" ").replace(b"\n", b" ")
    return raw


class SimpleString:
    """A status reply (``+OK``): the only way to send text without a length prefix."""

    __slots__ = ("text", "wire")

    def __init__(self, text: str | bytes) -> None:
        self.text = text
        self.wire = b"+" + _line(text) + b"\r\n"

    def __eq__(self, other: object) -> bool:
        return type(other) is SimpleString and other.wire == self.wire

    def __hash__(self) -> int:
        return hash(self.wire)

    def __repr__(self) -> str:
        return f"SimpleString({self.text!r})"


class Error:
    """An error reply. The message starts with its code: ``Error("ERR unknown command 'x'")``.

    A str message is encoded as UTF-8 with surrogateescape, so raw client bytes decoded with
    surrogateescape go back out unchanged, as Redis echoes them.
    """

    __slots__ = ("message", "wire")

    def __init__(self, message: str | bytes) -> None:
        self.message = message
        self.wire = b"-" + _line(message) + b"\r\n"

    def __eq__(self, other: object) -> bool:
        return type(other) is Error and other.wire == self.wire

    def __hash__(self) -> int:
        return hash(self.wire)

    def __repr__(self) -> str:
        return f"Error({self.message!r})"


class Verbatim:
    """Human-readable text (INFO, CLIENT LIST): RESP3 ``=`` verbatim string, RESP2 bulk."""

    __slots__ = ("data", "fmt")

    def __init__(self, text: str | bytes, fmt: str = "txt") -> None:
        if len(fmt) != 3 or not fmt.isascii():
            raise ValueError("verbatim format must be 3 ASCII characters")
        self.data = text.encode() if isinstance(text, str) else bytes(text)
        self.fmt = fmt

    def __eq__(self, other: object) -> bool:
        return type(other) is Verbatim and (other.data, other.fmt) == (self.data, self.fmt)

    def __hash__(self) -> int:
        return hash((self.data, self.fmt))

    def __repr__(self) -> str:
        return f"Verbatim({self.data!r}, {self.fmt!r})"


class NullArray:
    """The type of :data:`NULL_ARRAY`, the null multibulk (``*-1`` in RESP2), e.g. BLPOP timeout."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NULL_ARRAY"


NULL_ARRAY = NullArray()
OK = SimpleString("OK")
PONG = SimpleString("PONG")
QUEUED = SimpleString("QUEUED")
NULL_BULK_RESP2 = b"$-1\r\n"
NULL_ARRAY_RESP2 = b"*-1\r\n"
NULL_RESP3 = b"_\r\n"

_CRLF = b"\r\n"
_BULK_HEADERS = [b"$%d\r\n" % i for i in range(1024)]
_ARRAY_HEADERS = [b"*%d\r\n" % i for i in range(1024)]
_SMALL_INTS = [b":%d\r\n" % i for i in range(-1, 1024)]  # index i + 1


def _int_wire(v: int) -> bytes:
    if -1 <= v < 1023:
        return _SMALL_INTS[v + 1]
    if _LL_MIN <= v <= _LL_MAX:
        return b":%d\r\n" % v
    return _bulk(b"%d" % v)  # RESP2 integers are int64 (hiredis rejects more), as INCRBYFLOAT


def _int_wire3(v: int) -> bytes:
    if -1 <= v < 1023:
        return _SMALL_INTS[v + 1]
    if _LL_MIN <= v <= _LL_MAX:
        return b":%d\r\n" % v
    return b"(%d\r\n" % v  # RESP3 big number


def _double_text(v: float) -> bytes:
    """Shortest round-trip text, without Python's ".0" (Redis writes 1.0 as "1")."""
    text = repr(v)
    if text.endswith(".0"):
        text = text[:-2]
    return text.encode()


def _double2(v: float) -> bytes:
    text = _double_text(v)
    return b"$%d\r\n%b\r\n" % (len(text), text)


def _double3(v: float) -> bytes:
    return b",%b\r\n" % _double_text(v)


def _bulk(v: bytes | bytearray | memoryview) -> bytes:
    data = bytes(v)
    return b"$%d\r\n%b\r\n" % (len(data), data)


def _verbatim2(v: Verbatim) -> bytes:
    return _bulk(v.data)


def _verbatim3(v: Verbatim) -> bytes:
    return b"=%d\r\n%b:%b\r\n" % (len(v.data) + 4, v.fmt.encode(), v.data)


def _wire(v: SimpleString | Error) -> bytes:
    return v.wire


_only_bytes = frozenset((bytes,)).issuperset


def encode_bulk_replies(values: Iterable[bytes | None], protocol: int) -> bytes:
    """The wire form of consecutive replies that are each a bulk string or a null (a run of
    pipelined GETs), in one buffer."""
    null = NULL_RESP3 if protocol == 3 else NULL_BULK_RESP2
    headers = _BULK_HEADERS
    return b"".join([
        null if v is None else
        headers[len(v)] + v + _CRLF if len(v) < 1024 else b"$%d\r\n%s\r\n" % (len(v), v)
        for v in values
    ])


def _bulks(headers: Iterable[bytes], values: Iterable[bytes]) -> Iterator[bytes]:
    """Interleave bulk headers, values and CRLFs, lazily, for one ``join``."""
    return chain.from_iterable(zip(headers, values, repeat(_CRLF)))


def _reject_str(v: str) -> bytes:
    raise TypeError(f"str reply {v[:40]!r}: encode it to bytes, or wrap it in SimpleString")


_SCALARS2: dict[type, Callable] = {
    int: _int_wire,
    bool: lambda v: _SMALL_INTS[2] if v else _SMALL_INTS[1],
    float: _double2,
    type(None): lambda v: NULL_BULK_RESP2,
    NullArray: lambda v: NULL_ARRAY_RESP2,
    SimpleString: _wire,
    Error: _wire,
    Verbatim: _verbatim2,
    bytearray: _bulk,
    memoryview: _bulk,
    str: _reject_str,
}
_SCALARS3: dict[type, Callable] = {
    **_SCALARS2,
    int: _int_wire3,
    bool: lambda v: b"#t\r\n" if v else b"#f\r\n",
    float: _double3,
    type(None): lambda v: NULL_RESP3,
    NullArray: lambda v: NULL_RESP3,
    Verbatim: _verbatim3,
}
# Subclasses (IntEnum, OrderedDict, bytes subclasses...) fall back to their base's encoding.
_BASES = (int, float, bytes, bytearray, str, list, tuple, dict, set, frozenset)


def _make_encoder(protocol: int) -> Callable[[list[bytes], object], None]:
    scalars = _SCALARS3 if protocol == 3 else _SCALARS2
    map_prefix, set_prefix = (b"%", b"~") if protocol == 3 else (b"*", b"*")
    map_factor = 1 if protocol == 3 else 2

    def encode_into(parts: list[bytes], value: object) -> None:
        append = parts.append
        # Shortcuts for the usual replies: one scalar, or an array of small bulks.
        t = type(value)
        if t is bytes and len(value) < 1024:
            append(_BULK_HEADERS[len(value)] + value + _CRLF)
            return
        enc = scalars.get(t)
        if enc is not None:
            append(enc(value))
            return
        if (t is list or t is tuple) and len(value) < 1024 and _only_bytes(map(type, value)):
            try:  # C-level when every item is bytes under 1 KiB; else the general walk
                append(
                    _ARRAY_HEADERS[len(value)]
                    + b"".join(_bulks(map(_BULK_HEADERS.__getitem__, map(len, value)), value))
                )
                return
            except IndexError:
                pass
        stack: list = []
        it: Iterator = iter((value,))
        while True:
            for v in it:
                t = type(v)
                if t is bytes:
                    if len(v) < 1024:
                        append(_BULK_HEADERS[len(v)] + v + _CRLF)
                    else:  # no copy of big values: the transport joins once
                        append(b"$%d\r\n" % len(v))
                        append(v)
                        append(_CRLF)
                    continue
                enc = scalars.get(t)
                if enc is not None:
                    append(enc(v))
                    continue
                if t is list or t is tuple:
                    append(_ARRAY_HEADERS[len(v)] if len(v) < 1024 else b"*%d\r\n" % len(v))
                    items: Iterable = v
                elif t is dict:
                    append(b"%b%d\r\n" % (map_prefix, len(v) * map_factor))
                    items = chain.from_iterable(v.items())
                elif t is set or t is frozenset:
                    append(b"%b%d\r\n" % (set_prefix, len(v)))
                    items = v
                else:
                    for base in _BASES:
                        if isinstance(v, base):
                            # Re-dispatch the value as its base type, at the same depth.
                            stack.append(it)
                            it = iter((base(v),))
                            break
                    else:
                        raise TypeError(f"cannot encode {t.__name__} as a RESP reply")
                    break
                stack.append(it)
                it = iter(items)
                break  # descend: continue with the container's items
            else:
                if not stack:
                    return
                it = stack.pop()

    encode_into.__doc__ = f"Append the RESP{protocol} encoding of ``value`` to ``parts``."
    return encode_into


encode_into_resp2 = _make_encoder(2)
encode_into_resp3 = _make_encoder(3)
_ENCODERS = {2: encode_into_resp2, 3: encode_into_resp3}


def encoder_for(protocol: int) -> Callable[[list[bytes], object], None]:
    """The ``encode_into`` function of a protocol version, to bind once per connection."""
    try:
        return _ENCODERS[protocol]
    except KeyError:
        raise ValueError(f"unsupported RESP protocol version {protocol!r}") from None


def encode_into(parts: list[bytes], value: object, protocol: int = 2) -> None:
    """Append the wire form of reply ``value`` to ``parts``, for one ``b"".join`` per batch.

    bytes → bulk string; int → integer; None → null; list/tuple → array; dict → map (RESP2:
    flat array); set → set (RESP2: array); float → double (RESP2: bulk text); bool → boolean
    (RESP2: 1/0); plus :class:`SimpleString`, :class:`Error`, :class:`Verbatim` and
    :data:`NULL_ARRAY`. str is refused: handlers choose the encoding. Nesting has no depth
    limit (no recursion).
    """
    encoder_for(protocol)(parts, value)


def encode(value: object, protocol: int = 2) -> bytes:
    """The wire form of one reply."""
    parts: list[bytes] = []
    encoder_for(protocol)(parts, value)
    return parts[0] if len(parts) == 1 else b"".join(parts)
