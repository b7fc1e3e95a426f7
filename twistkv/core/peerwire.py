"""The peer protocol: frame codec, HELLO handshake and request matching.

Normative spec: C{docs/peer-protocol.md}; a test checks that the verbs and
error codes listed here and there agree. In brief, a frame is::

    VERB request-id key=value key=value ...\\r\\n
    <exactly n payload bytes when the header carries len=n>

The header is printable ASCII so that a human can speak the protocol with
C{nc}; binary data travels in the payload or percent-encoded (L{quote}). The
codec knows nothing of verb semantics: framing is the same for every verb, so
a node can skip a frame it does not understand and answer C{unknown_verb}.

Everything here is sans-IO: bytes and frames go in, frames and decisions come
out; randomness (handshake nonces) and time (request deadlines) are arguments.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any, NamedTuple

__all__ = [
    "PROTOCOL_VERSION",
    "MAX_LINE",
    "DEFAULT_MAX_PAYLOAD",
    "MAX_REQUEST_ID",
    "MAX_PLACEMENT",
    "CONNECTION_REQUEST_ID",
    "VERBS",
    "RESPONSE_VERBS",
    "ERROR_CODES",
    "InvalidFrameError",
    "PeerProtocolError",
    "Frame",
    "encode_frame",
    "FrameDecoder",
    "quote",
    "unquote",
    "unquote_text",
    "error_frame",
    "error_details",
    "Role",
    "HandshakeConfig",
    "Established",
    "HandshakeFailed",
    "HandshakeStep",
    "Handshake",
    "TooManyOutstandingRequests",
    "PendingRequests",
    "IncrRequest",
    "incr_frame",
    "parse_incr",
    "FEATURE_PUT_BATCH",
    "SUPPORTED_FEATURES",
    "MAX_BATCH_RECORDS",
    "MAX_BATCH_BYTES",
    "BatchEntry",
    "put_batch_frames",
    "parse_put_batch",
    "batch_outcomes_frame",
    "parse_batch_outcomes",
    "FEATURE_GET_BATCH",
    "NOT_SENT",
    "get_batch_frames",
    "parse_get_batch",
    "get_batch_answer",
    "parse_get_batch_answer",
]

#: Bumped on any incompatible change; peers must speak the same version.
PROTOCOL_VERSION = 1
#: Longest header line accepted, terminator included.
MAX_LINE = 65536
#: Default payload ceiling; must exceed the largest client value plus record overhead.
DEFAULT_MAX_PAYLOAD = 64 * 1024 * 1024
#: Request ids fit a signed 64-bit integer so that any peer implementation can hold them.
MAX_REQUEST_ID = 2**63 - 1
#: Frames about the connection itself (HELLO, AUTH, fatal ERROR) rather than one request.
CONNECTION_REQUEST_ID = 0
#: HELLO feature: the sender accepts C{PUT_BATCH} (§5.2, §8).
FEATURE_PUT_BATCH = "put_batch"
#: HELLO feature: the sender accepts C{GET_BATCH} (§5.2.2, §8).
FEATURE_GET_BATCH = "get_batch"
#: Every feature this implementation offers in HELLO.
SUPPORTED_FEATURES: frozenset[str] = frozenset({FEATURE_PUT_BATCH, FEATURE_GET_BATCH})
#: Most records one C{PUT_BATCH} may carry; a receiver refuses more (C{bad_request}).
MAX_BATCH_RECORDS = 1024
#: Payload size a sender aims at per C{PUT_BATCH}: more records start another frame (a single
#: larger record still travels, alone); the receiver's payload limit is the hard bound.
MAX_BATCH_BYTES = 1024 * 1024
#: Longest key a C{PUT_BATCH} entry may carry (the coordinator's key limit, §2).
MAX_BATCH_KEY = 16 * 1024
_MAX_FEATURES = 32  # names read from one HELLO's features field
_FEATURE = re.compile(r"[a-z0-9_]+")

#: Every verb of the wire vocabulary -> its purpose (the spec's verb table mirrors this).
VERBS: Mapping[str, str] = MappingProxyType(
    {
        "HELLO": "open a connection: protocol version, cluster, node id, address, auth challenge",
        "AUTH": "initiator's HMAC proof answering the responder's challenge",
        "ERROR": "refuse a request or, with request id 0, the whole connection",
        "PING": "connection liveness probe",
        "PONG": "answer to PING",
        "PUT": "store a record on a replica (or as a hint on a stand-in)",
        "GET": "read a key's record from a replica",
        "DEL": "store a tombstone record on a replica",
        "ACK": "a replica applied a PUT, DEL, HINT or RB_PUT",
        "NACK": "a replica could not serve a request",
        "VAL": "answer carrying a value: a GET's record, a STATS snapshot, an AE_* or RB_* "
               "answer, a PUT_BATCH's per-record outcomes, a GET_BATCH's records",
        "INCR": "ask a key's acting replica to add to its PN-counter entry and replicate the result",
        "HINT": "deliver a hinted record from a stand-in to its recovered owner",
        "STATS": "ask a node for its statistics snapshot",
        "SWIM_PING": "SWIM direct probe, piggybacking membership updates",
        "SWIM_ACK": "SWIM answer to a direct or indirect probe",
        "SWIM_NACK": "a SWIM_PINGREQ helper could not reach the target",
        "SWIM_PINGREQ": "ask a node to probe a target on the sender's behalf",
        "SWIM_GOSSIP": "push queued membership rumours to a random member (no reply)",
        "SWIM_SYNC": "push the sender's full membership view (anti-entropy)",
        "SWIM_SYNCACK": "answer to SWIM_SYNC with the receiver's full view",
        "AE_TREE": "ask a replica for the Merkle tree of its keys in shared token ranges",
        "AE_KEYS": "ask a replica for the keys and record digests of differing tree leaves",
        "RB_STATUS": "ask a node for its view of the ring and the range movements under way",
        "RB_FETCH": "ask a node for a chunk of its records in token ranges (range streaming)",
        "RB_PUT": "deliver a chunk of streamed records to a range's new owner",
        "PUT_BATCH": "store several records on a replica in one frame, answered per record",
        "GET_BATCH": "read several keys' records from a replica in one frame",
    }
)

#: Verbs that answer the receiver's own outstanding request (match with PendingRequests);
#: every other verb after the handshake is a request from the peer.
RESPONSE_VERBS: frozenset[str] = frozenset(
    {"ERROR", "PONG", "ACK", "NACK", "VAL", "SWIM_ACK", "SWIM_NACK", "SWIM_SYNCACK"}
)

#: Every code an ERROR frame may carry -> what it means (mirrored in the spec).
ERROR_CODES: Mapping[str, str] = MappingProxyType(
    {
        "line_too_long": "header line longer than the receiver's limit",
        "payload_too_large": "declared payload length above the receiver's limit",
        "bad_header": "header is not printable ASCII tokens separated by single spaces",
        "bad_verb": "verb is not upper-case letters and underscores",
        "bad_request_id": "request id is not a canonical decimal in range",
        "bad_field": "field is not key=value with a valid key and value",
        "duplicate_field": "the same field key appears twice in one header",
        "bad_length": "len is not a canonical positive decimal",
        "bad_hello": "HELLO or AUTH lacks a required field or has an invalid one",
        "handshake_required": "a frame other than the expected handshake frame arrived",
        "version_mismatch": "the peers speak different protocol versions",
        "cluster_mismatch": "the peers belong to different clusters",
        "placement_mismatch": "the peers place keys differently: their replication factors or "
                              "vnodes per node differ",
        "auth_mismatch": "one peer has a cluster secret configured and the other has none",
        "auth_failed": "an HMAC proof is wrong: different secrets or a replayed handshake",
        "self_connection": "a node connected to itself",
        "unknown_verb": "the receiver does not implement this verb",
        "bad_request": "the verb is known but its fields or payload are invalid",
        "too_many_requests": "the sender has more requests outstanding than the receiver allows",
    }
)

_VERB = re.compile(r"[A-Z_]+")
_KEY = re.compile(r"[a-z0-9_]+")
_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e]*")  # printable ASCII except space and '='
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")
_LENGTH = re.compile(r"[1-9][0-9]*")
_HEADER_LINE = re.compile(rb"[\x21-\x7e]+(?: [\x21-\x7e]+)*")
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
_LENGTH_FIELD = "len"
_SNIPPET = 40  # how much of hostile input an error message may quote


def _snippet(text: str) -> str:
    return repr(text if len(text) <= _SNIPPET else text[:_SNIPPET] + "...")


class InvalidFrameError(ValueError):
    """A frame we were about to build or send breaks the wire rules: our fault.

    The decoder turns this into L{PeerProtocolError} when the peer is the one
    at fault, so that each side of the connection has its own exception.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class PeerProtocolError(Exception):
    """The peer sent something that breaks the protocol: its fault.

    C{code} is one of L{ERROR_CODES}; the adapter answers with
    L{to_frame} and closes the connection.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def to_frame(self, request_id: int = CONNECTION_REQUEST_ID) -> Frame:
        """The ERROR frame that tells the peer what it did wrong."""
        return error_frame(request_id, self.code, self.message)


#: Verbs and field keys already found valid, so the usual frame skips their regexes. Seeded
#: and grown only up to a bound, so a stream of odd names cannot grow it without limit.
_VALID_VERBS: set[str] = set(VERBS)
_VALID_KEYS: set[str] = set()
_MAX_REMEMBERED = 1024
_value_ok = _VALUE.fullmatch
#: A header with no fields and no payload, matched in one step (see _parse_header).
_BARE_HEADER = re.compile(rb"([A-Z_]+) (0|[1-9][0-9]{0,18})").fullmatch
_NO_FIELDS: MappingProxyType[str, str] = MappingProxyType({})


def _check_header_parts(verb: str, request_id: int, fields: Mapping[str, str]) -> None:
    if (
        type(verb) is str
        and verb in _VALID_VERBS
        and type(request_id) is int
        and 0 <= request_id <= MAX_REQUEST_ID
    ):
        for key, value in fields.items():
            if type(key) is not str or key not in _VALID_KEYS:
                break
            if type(value) is not str or not _value_ok(value):
                break
        else:
            return
    _check_header_parts_slow(verb, request_id, fields)
    if len(_VALID_VERBS) < _MAX_REMEMBERED:
        _VALID_VERBS.add(verb)
    if len(_VALID_KEYS) < _MAX_REMEMBERED:
        _VALID_KEYS.update(fields)


def _check_header_parts_slow(verb: str, request_id: int, fields: Mapping[str, str]) -> None:
    if not isinstance(verb, str) or not _VERB.fullmatch(verb):
        raise InvalidFrameError("bad_verb", f"verb {_snippet(str(verb))} is not [A-Z_]+")
    if isinstance(request_id, bool) or not isinstance(request_id, int):
        raise TypeError(f"request id must be an int, not {type(request_id).__name__}")
    if not 0 <= request_id <= MAX_REQUEST_ID:
        raise InvalidFrameError("bad_request_id", f"request id {request_id} is out of range")
    for key, value in fields.items():
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise InvalidFrameError(
                "bad_field", f"field key {_snippet(str(key))} is not [a-z0-9_]+"
            )
        if key == _LENGTH_FIELD:
            raise InvalidFrameError("bad_field", "'len' is reserved for the payload length")
        if not isinstance(value, str) or not _VALUE.fullmatch(value):
            raise InvalidFrameError(
                "bad_field",
                f"value of {key!r} must be printable ASCII without space or '=' (use quote())",
            )


@dataclass(frozen=True)
class Frame:
    """One protocol message, validated on construction so that bad frames fail
    where they are built, not on the peer.

    C{fields} is copied into a read-only mapping; the payload length is not a
    field but derived from C{payload} by the codec.

    @raise InvalidFrameError: a verb, request id, key or value breaks the rules.
    @raise TypeError: a payload that is not C{bytes} or a request id not an C{int}.
    """

    verb: str
    request_id: int
    fields: Mapping[str, str] = field(default_factory=dict)
    payload: bytes = b""

    def __post_init__(self) -> None:
        if not isinstance(self.payload, bytes):
            raise TypeError(f"payload must be bytes, not {type(self.payload).__name__}")
        frozen_fields = MappingProxyType(dict(self.fields))
        _check_header_parts(self.verb, self.request_id, frozen_fields)
        object.__setattr__(self, "fields", frozen_fields)

    @classmethod
    def _trusted(
        cls, verb: str, request_id: int, fields: Mapping[str, str], payload: bytes = b""
    ) -> Frame:
        """Build a frame from parts already validated (C{fields} already read-only).

        For the codec and L{with_request_id}: skips the checks of construction, which the
        caller has already done.
        """
        frame = _new_frame(cls)
        # One store instead of four frozen-attribute writes: this runs for every frame.
        _set(frame, "__dict__", {"verb": verb, "request_id": request_id, "fields": fields,
                                 "payload": payload})
        return frame

    def with_request_id(self, request_id: int) -> Frame:
        """This frame under another request id; like C{dataclasses.replace(frame,
        request_id=...)} but only the new id is checked (the rest was checked already).

        @raise InvalidFrameError: the id is out of range.
        @raise TypeError: the id is not an C{int}.
        """
        if type(request_id) is not int:
            _check_header_parts(self.verb, request_id, {})
        if not 0 <= request_id <= MAX_REQUEST_ID:
            raise InvalidFrameError("bad_request_id", f"request id {request_id} is out of range")
        return Frame._trusted(self.verb, request_id, self.fields, self.payload)


_new_frame = object.__new__
_set = object.__setattr__


def encode_frame(frame: Frame, max_line: int = MAX_LINE, request_id: int | None = None) -> bytes:
    """Serialise C{frame}: header line (C{len} last, only with a payload) then payload.

    @param request_id: send the frame under this id instead of its own, without building
        a copy (L{Frame.with_request_id}); the caller vouches that it is in range (the
        adapter's own allocated ids, or the id of a frame it decoded).
    @raise InvalidFrameError: the header would exceed C{max_line}; a peer
        would refuse it, so it is our bug to send it.
    """
    head = f"{frame.verb} {frame.request_id if request_id is None else request_id}"
    fields = frame.fields
    if fields:
        head = " ".join([head, *[f"{key}={value}" for key, value in fields.items()]])
    payload = frame.payload
    if payload:
        header = f"{head} {_LENGTH_FIELD}={len(payload)}\r\n".encode("ascii")
    else:
        header = f"{head}\r\n".encode("ascii")
    if len(header) > max_line:
        raise InvalidFrameError(
            "line_too_long", f"{frame.verb} header is {len(header)} bytes, limit {max_line}"
        )
    return header + payload if payload else header


def _parse_header(
    line: bytes, max_payload: int
) -> tuple[str, int, MappingProxyType[str, str], int]:
    """Parse one header line (terminator removed): verb, request id, fields, payload length."""
    if line.endswith(b"\r"):
        line = line[:-1]
    bare = _BARE_HEADER(line)
    if bare is not None and (request_id := int(bare[2])) <= MAX_REQUEST_ID:
        # "VERB id" alone, the form of every ACK: nothing else to check.
        return bare[1].decode("ascii"), request_id, _NO_FIELDS, 0
    if not _HEADER_LINE.fullmatch(line):
        raise PeerProtocolError(
            "bad_header", "header must be printable ASCII tokens separated by single spaces"
        )
    verb, *rest = line.decode("ascii").split(" ")
    if not rest:
        raise PeerProtocolError("bad_header", f"header {_snippet(verb)} lacks a request id")
    request_text, *pairs = rest
    if not _DECIMAL.fullmatch(request_text) or (request_id := int(request_text)) > MAX_REQUEST_ID:
        raise PeerProtocolError(
            "bad_request_id", f"request id {_snippet(request_text)} is not a decimal in range"
        )
    fields: dict[str, str] = {}
    length = 0
    seen_length = False
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals:
            raise PeerProtocolError("bad_field", f"field {_snippet(pair)} lacks '='")
        if key in fields or (key == _LENGTH_FIELD and seen_length):
            raise PeerProtocolError("duplicate_field", f"field {_snippet(key)} appears twice")
        if key == _LENGTH_FIELD:
            seen_length = True
            length = _parse_length(value, max_payload)
        else:
            fields[key] = value
    # The line is printable ASCII without spaces and the request id is in range; what is
    # left of Frame's checks is the verb, the keys and '=' inside values.
    if verb not in _VALID_VERBS and not _VERB.fullmatch(verb):
        raise PeerProtocolError("bad_verb", f"verb {_snippet(verb)} is not [A-Z_]+")
    for key, value in fields.items():
        if key not in _VALID_KEYS and not _KEY.fullmatch(key):
            raise PeerProtocolError(
                "bad_field", f"field key {_snippet(key)} is not [a-z0-9_]+"
            )
        if "=" in value:
            raise PeerProtocolError(
                "bad_field",
                f"value of {key!r} must be printable ASCII without space or '=' (use quote())",
            )
    return verb, request_id, MappingProxyType(fields), length


def _parse_length(text: str, max_payload: int) -> int:
    if not _LENGTH.fullmatch(text):
        raise PeerProtocolError("bad_length", f"length {_snippet(text)} is not a positive decimal")
    # Compare digit counts first so a hostile 60 KiB number is never converted.
    if len(text) > len(str(max_payload)) or int(text) > max_payload:
        raise PeerProtocolError(
            "payload_too_large", f"declared payload length {_snippet(text)} exceeds {max_payload}"
        )
    return int(text)


class FrameDecoder:
    """Incremental decoder: feed it bytes as they arrive, in any chunking.

    Limits are checked before anything is buffered for them: a line is refused
    as soon as C{max_line} bytes arrive without a newline, and a payload as
    soon as its header declares more than C{max_payload}. After an error the
    decoder stays failed (the stream has lost sync); the adapter sends
    L{PeerProtocolError.to_frame} and closes. Frames completed earlier in the
    same C{feed} call are dropped with the connection.

    Senders end lines with CRLF; a bare LF is accepted so that C{nc} without
    C{-C} works.
    """

    def __init__(self, max_line: int = MAX_LINE, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        if max_line < 2 or max_payload < 0:
            raise ValueError("max_line must be >= 2 and max_payload >= 0")
        self._max_line = max_line
        self._max_payload = max_payload
        self._buffer = bytearray()
        # Frames are consumed by moving _pos; the buffer is cut once per feed, not per frame.
        self._pos = 0
        self._scanned = 0  # buffer prefix already known to hold no newline
        # header (verb, request id, fields) awaiting its payload
        self._header: tuple[str, int, MappingProxyType[str, str]] | None = None
        self._payload_length = 0
        self._error: PeerProtocolError | None = None

    def feed(self, data: bytes) -> list[Frame]:
        """Consume C{data}; return the frames it completes, in order.

        @raise PeerProtocolError: the stream is malformed or exceeds a limit.
        """
        if self._error is not None:
            raise PeerProtocolError(self._error.code, self._error.message)
        self._buffer += data
        frames: list[Frame] = []
        try:
            while (frame := self._next_frame()) is not None:
                frames.append(frame)
        except PeerProtocolError as error:
            self._error = error
            self._buffer.clear()
            self._pos = self._scanned = 0
            raise
        pos = self._pos
        if pos:
            del self._buffer[:pos]
            self._scanned -= pos
            self._pos = 0
        return frames

    def _next_frame(self) -> Frame | None:
        buffer, pos = self._buffer, self._pos
        if self._header is None:
            newline = buffer.find(b"\n", self._scanned, pos + self._max_line)
            if newline < 0:
                if len(buffer) - pos >= self._max_line:
                    raise PeerProtocolError(
                        "line_too_long", f"no line end within {self._max_line} bytes"
                    )
                self._scanned = len(buffer)
                return None
            line = bytes(buffer[pos:newline])
            pos = self._pos = self._scanned = newline + 1
            verb, request_id, fields, length = _parse_header(line, self._max_payload)
            if length == 0:
                return Frame._trusted(verb, request_id, fields)
            self._header, self._payload_length = (verb, request_id, fields), length
        end = pos + self._payload_length
        if len(buffer) < end:
            return None
        payload = bytes(buffer[pos:end])
        self._pos = self._scanned = end
        (verb, request_id, fields), self._header = self._header, None
        return Frame._trusted(verb, request_id, fields, payload)


_SAFE_BYTES = frozenset(range(0x21, 0x7F)) - frozenset(b"=%")
_QUOTED = tuple(chr(b) if b in _SAFE_BYTES else f"%{b:02X}" for b in range(256))


_NO_ESCAPE_TEXT = re.compile(r"[\x21-\x24\x26-\x3c\x3e-\x7e]*")
_NO_ESCAPE_BYTES = re.compile(rb"[\x21-\x24\x26-\x3c\x3e-\x7e]*")


def quote(value: str | bytes) -> str:
    """Percent-encode C{value} (str as UTF-8) into a legal field value.

    Space, '=', '%' and every byte outside printable ASCII become C{%XX}.
    """
    if isinstance(value, str):
        if _NO_ESCAPE_TEXT.fullmatch(value):
            return value
        raw = value.encode("utf-8")
    else:
        if type(value) is bytes and _NO_ESCAPE_BYTES.fullmatch(value):
            return value.decode("ascii")
        raw = value
    return "".join(map(_QUOTED.__getitem__, raw))


def unquote(value: str) -> bytes:
    """Reverse L{quote}. A stray '%' is the peer's fault.

    @raise PeerProtocolError: C{bad_field} for non-ASCII or a broken escape.
    """
    try:
        raw = value.encode("ascii")
    except UnicodeEncodeError:
        raise PeerProtocolError("bad_field", "quoted value is not ASCII") from None
    if b"%" not in raw:
        return raw
    head, *escaped = raw.split(b"%")
    out = bytearray(head)
    for piece in escaped:
        if len(piece) < 2 or not _HEX_DIGITS.issuperset(piece[:2]):
            raise PeerProtocolError("bad_field", f"broken %-escape in {_snippet(value)}")
        out.append(int(piece[:2], 16))
        out += piece[2:]
    return bytes(out)


def unquote_text(value: str) -> str:
    """Reverse L{quote} for text: the decoded bytes must be UTF-8."""
    try:
        return unquote(value).decode("utf-8")
    except UnicodeDecodeError:
        raise PeerProtocolError("bad_field", f"{_snippet(value)} is not UTF-8") from None


def error_frame(request_id: int, code: str, message: str) -> Frame:
    """An ERROR frame; request id 0 means the connection is being closed."""
    return Frame("ERROR", request_id, {"code": code, "message": quote(message)})


def error_details(frame: Frame) -> tuple[str, str]:
    """(code, message) of a received ERROR frame, tolerating a sloppy peer.

    Used when reporting why a peer refused us, so it never raises: a missing
    code reads as C{"unspecified"} and an undecodable message is shown raw.
    """
    code = frame.fields.get("code", "unspecified")
    raw_message = frame.fields.get("message", "")
    try:
        message = unquote_text(raw_message)
    except PeerProtocolError:
        message = raw_message
    return code, message


# Handshake ---------------------------------------------------------------------
#
# Transition table (see docs/peer-protocol.md, "Handshake"):
#
#   role       state        event                          next         sends
#   initiator  NEW          start()                        AWAIT_HELLO  HELLO(nonce_i)
#   initiator  AWAIT_HELLO  HELLO valid (proof_r correct)  ESTABLISHED  AUTH(proof_i) if secret
#   responder  NEW          start()                        AWAIT_HELLO  -
#   responder  AWAIT_HELLO  HELLO valid, no secret         ESTABLISHED  HELLO
#   responder  AWAIT_HELLO  HELLO valid, secret            AWAIT_AUTH   HELLO(nonce_r, proof_r)
#   responder  AWAIT_AUTH   AUTH with correct proof_i      ESTABLISHED  -
#   either     AWAIT_*      ERROR                          FAILED       -
#   either     AWAIT_*      anything else / invalid        FAILED       ERROR 0
#
# Each proof is an HMAC over a fresh nonce chosen by the *verifier*, so a
# recorded HELLO or AUTH is useless on any later connection; the prover's role
# is part of the MAC input, so a responder's proof cannot be reflected back as
# an initiator's.

_AUTH_NONE = "none"
_AUTH_HMAC = "hmac-sha256"
_PROOF_LABEL = b"twistkv-peer-auth"
_MIN_NONCE = 16
_MAX_NONCE = 64
_MAX_NODE_ID = 255  # the record format stores node ids as str8
#: Bound on the replicas and vnodes a HELLO may announce (and a node may be configured with).
MAX_PLACEMENT = 100_000
_U32 = struct.Struct(">I")


class Role(Enum):
    """Which end of the TCP connection we are: the side that dialled initiates."""

    INITIATOR = "initiator"
    RESPONDER = "responder"


@dataclass(frozen=True)
class HandshakeConfig:
    """What this node asserts about itself in HELLO."""

    cluster: str
    node_id: str
    #: The peer-port address others should dial, e.g. C{"10.0.0.1:7380"}; may
    #: be empty for a client that accepts no peer connections.
    address: str
    #: Shared cluster secret; None disables authentication.
    secret: bytes | None = None
    version: int = PROTOCOL_VERSION
    #: Optional capabilities offered in HELLO's C{features} field (§8); a capability is
    #: used on a connection only when both ends offer it (L{Established.features}).
    features: frozenset[str] = field(default_factory=lambda: SUPPORTED_FEATURES)
    #: How this node places keys: the replication factor N and the vnodes per node, sent in
    #: HELLO and checked against the peer's. Nodes that disagree would compute different
    #: preference lists, and their quorums would no longer overlap. None (a tool that
    #: stores nothing) sends and checks neither.
    replicas: int | None = None
    vnodes: int | None = None

    def __post_init__(self) -> None:
        for name, value in (("replicas", self.replicas), ("vnodes", self.vnodes)):
            if value is not None and not 1 <= value <= MAX_PLACEMENT:
                raise ValueError(f"{name} must be 1..{MAX_PLACEMENT}, not {value}")
        for feature in self.features:
            if not _FEATURE.fullmatch(feature):
                raise ValueError(f"feature name {feature!r} is not [a-z0-9_]+")
        if not self.node_id or len(self.node_id.encode("utf-8")) > _MAX_NODE_ID:
            raise ValueError(f"node id must be 1..{_MAX_NODE_ID} UTF-8 bytes")
        if self.secret is not None and not self.secret:
            raise ValueError("an empty cluster secret would authenticate anyone; use None")


@dataclass(frozen=True)
class Established:
    """The handshake succeeded; requests may flow."""

    peer_node_id: str
    peer_address: str
    #: Whether the peer proved knowledge of the cluster secret.
    authenticated: bool
    #: Capabilities both ends offered: what may be used on this connection.
    features: frozenset[str] = frozenset()


@dataclass(frozen=True)
class HandshakeFailed:
    """The handshake failed; the adapter sends any frames of the step, then closes."""

    code: str
    message: str
    #: True when the peer refused us (we got its ERROR), False when we refused it.
    detected_by_peer: bool


@dataclass(frozen=True)
class HandshakeStep:
    """What one handshake input produced: frames to send, and the outcome if decided."""

    send: tuple[Frame, ...] = ()
    outcome: Established | HandshakeFailed | None = None


@dataclass(frozen=True)
class _PeerHello:
    node_id: str
    address: str
    nonce: bytes
    features: frozenset[str] = frozenset()


class _State(Enum):
    NEW = "new"
    AWAIT_HELLO = "await_hello"
    AWAIT_AUTH = "await_auth"
    DONE = "done"


def _length_prefixed(*parts: bytes) -> bytes:
    return b"".join(_U32.pack(len(part)) + part for part in parts)


def _proof(
    secret: bytes,
    prover_role: Role,
    version: int,
    cluster: str,
    prover: _PeerHello,
    verifier: _PeerHello,
) -> str:
    """HMAC-SHA256 proving knowledge of C{secret} over the verifier's fresh nonce.

    Input: label, then length-prefixed (u32 big-endian) prover role, version,
    cluster, prover id, verifier id, prover address, verifier address,
    verifier nonce ("their nonce"), prover nonce ("our nonce").
    """
    message = _PROOF_LABEL + _length_prefixed(
        prover_role.value.encode("ascii"),
        str(version).encode("ascii"),
        cluster.encode("utf-8"),
        prover.node_id.encode("utf-8"),
        verifier.node_id.encode("utf-8"),
        prover.address.encode("utf-8"),
        verifier.address.encode("utf-8"),
        verifier.nonce,
        prover.nonce,
    )
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def _required(frame: Frame, key: str) -> str:
    try:
        return frame.fields[key]
    except KeyError:
        raise PeerProtocolError("bad_hello", f"{frame.verb} lacks the {key!r} field") from None


class Handshake:
    """Sans-IO connection opening for one end of a peer connection.

    Call L{start} once when the connection is made, then L{receive} with each
    frame until a step carries an outcome. Send every frame of every step;
    close the connection after sending when the outcome is L{HandshakeFailed}.
    """

    def __init__(self, role: Role, config: HandshakeConfig, nonce: bytes | None = None) -> None:
        """
        @param nonce: fresh random bytes (16..64) for this connection, e.g.
            C{os.urandom(16)}; required when a secret is configured, unused
            otherwise. Reusing a nonce lets a recorded handshake be replayed.
        """
        if config.secret is not None and (
            nonce is None or not _MIN_NONCE <= len(nonce) <= _MAX_NONCE
        ):
            raise ValueError(
                f"a cluster secret needs a fresh {_MIN_NONCE}..{_MAX_NONCE}-byte nonce"
            )
        self.role = role
        self._config = config
        self._own = _PeerHello(config.node_id, config.address, nonce or b"")
        self._peer: _PeerHello | None = None
        self._state = _State.NEW
        self._outcome: Established | HandshakeFailed | None = None

    @property
    def outcome(self) -> Established | HandshakeFailed | None:
        """None while the handshake is still in progress."""
        return self._outcome

    def start(self) -> HandshakeStep:
        """Begin: the initiator speaks first, the responder waits for HELLO."""
        if self._state is not _State.NEW:
            raise ValueError("start() called twice")
        self._state = _State.AWAIT_HELLO
        if self.role is Role.INITIATOR:
            return HandshakeStep(send=(self._hello(proof=None),))
        return HandshakeStep()

    def receive(self, frame: Frame) -> HandshakeStep:
        """Advance with one received frame."""
        if self._state in (_State.NEW, _State.DONE):
            raise ValueError(f"receive() in state {self._state.value}: route frames elsewhere")
        if frame.verb == "ERROR":
            code, message = error_details(frame)
            return self._finish(HandshakeFailed(code, message, detected_by_peer=True))
        try:
            if self._state is _State.AWAIT_HELLO:
                return self._on_hello(frame)
            return self._on_auth(frame)
        except PeerProtocolError as error:
            failure = HandshakeFailed(error.code, error.message, detected_by_peer=False)
            return self._finish(failure, error.to_frame())

    def _finish(self, outcome: Established | HandshakeFailed, *send: Frame) -> HandshakeStep:
        self._state = _State.DONE
        self._outcome = outcome
        return HandshakeStep(send=send, outcome=outcome)

    def _established(self) -> Established:
        assert self._peer is not None
        return Established(
            self._peer.node_id, self._peer.address, authenticated=self._config.secret is not None,
            features=self._peer.features & self._config.features,
        )

    def _hello(self, proof: str | None) -> Frame:
        config = self._config
        fields = {
            "version": str(config.version),
            "cluster": quote(config.cluster),
            "node": quote(config.node_id),
            "addr": quote(config.address),
            "auth": _AUTH_NONE if config.secret is None else _AUTH_HMAC,
        }
        if config.features:
            fields["features"] = ",".join(sorted(config.features))
        if config.replicas is not None:
            fields["replicas"] = str(config.replicas)
        if config.vnodes is not None:
            fields["vnodes"] = str(config.vnodes)
        if config.secret is not None:
            fields["nonce"] = self._own.nonce.hex()
        if proof is not None:
            fields["proof"] = proof
        return Frame("HELLO", CONNECTION_REQUEST_ID, fields)

    def _on_hello(self, frame: Frame) -> HandshakeStep:
        if frame.verb != "HELLO":
            raise PeerProtocolError(
                "handshake_required", f"expected HELLO, got {_snippet(frame.verb)}"
            )
        self._peer = self._parse_hello(frame)
        secret = self._config.secret
        if self.role is Role.RESPONDER:
            if secret is None:
                return self._finish(self._established(), self._hello(proof=None))
            self._state = _State.AWAIT_AUTH
            proof = self._proof_by(Role.RESPONDER)
            return HandshakeStep(send=(self._hello(proof=proof),))
        if secret is None:
            return self._finish(self._established())
        self._verify(frame, Role.RESPONDER)
        auth = Frame("AUTH", CONNECTION_REQUEST_ID, {"proof": self._proof_by(Role.INITIATOR)})
        return self._finish(self._established(), auth)

    def _on_auth(self, frame: Frame) -> HandshakeStep:
        if frame.verb != "AUTH":
            raise PeerProtocolError(
                "handshake_required", f"expected AUTH, got {_snippet(frame.verb)}"
            )
        self._verify(frame, Role.INITIATOR)
        return self._finish(self._established())

    def _proof_by(self, prover_role: Role) -> str:
        """The proof the party playing C{prover_role} must present on this connection."""
        assert self._config.secret is not None and self._peer is not None
        ours = prover_role is self.role
        prover, verifier = (self._own, self._peer) if ours else (self._peer, self._own)
        return _proof(
            self._config.secret,
            prover_role,
            self._config.version,
            self._config.cluster,
            prover,
            verifier,
        )

    def _verify(self, frame: Frame, peer_role: Role) -> None:
        expected = self._proof_by(peer_role).encode("ascii")
        presented = _required(frame, "proof").encode("ascii")
        if not hmac.compare_digest(expected, presented):
            raise PeerProtocolError(
                "auth_failed",
                f"{frame.verb} proof from the peer is wrong: the cluster secrets differ "
                "or the handshake was replayed",
            )

    def _parse_hello(self, frame: Frame) -> _PeerHello:
        config = self._config
        version = _required(frame, "version")
        if not _DECIMAL.fullmatch(version):
            raise PeerProtocolError("bad_hello", f"version {_snippet(version)} is not a decimal")
        if int(version) != config.version:
            raise PeerProtocolError(
                "version_mismatch",
                f"peer speaks protocol version {version}, this node speaks {config.version}",
            )
        cluster = self._text(frame, "cluster")
        if cluster != config.cluster:
            raise PeerProtocolError(
                "cluster_mismatch",
                f"peer belongs to cluster {_snippet(cluster)}, "
                f"this node to {_snippet(config.cluster)}",
            )
        node_id = self._text(frame, "node")
        if not node_id or len(node_id.encode("utf-8")) > _MAX_NODE_ID:
            raise PeerProtocolError("bad_hello", f"node id must be 1..{_MAX_NODE_ID} bytes")
        address = self._text(frame, "addr")
        auth = _required(frame, "auth")
        if auth not in (_AUTH_NONE, _AUTH_HMAC):
            raise PeerProtocolError("bad_hello", f"unknown auth scheme {_snippet(auth)}")
        if auth == _AUTH_NONE and config.secret is not None:
            raise PeerProtocolError(
                "auth_mismatch",
                "this node requires a cluster secret but the peer has none configured",
            )
        if auth == _AUTH_HMAC and config.secret is None:
            raise PeerProtocolError(
                "auth_mismatch",
                "the peer requires a cluster secret but this node has none configured",
            )
        nonce = b""
        if auth == _AUTH_HMAC:
            nonce_hex = _required(frame, "nonce")
            try:
                nonce = bytes.fromhex(nonce_hex)
            except ValueError:
                raise PeerProtocolError("bad_hello", "nonce is not hex") from None
            if nonce.hex() != nonce_hex or not _MIN_NONCE <= len(nonce) <= _MAX_NONCE:
                raise PeerProtocolError(
                    "bad_hello", f"nonce must be {_MIN_NONCE}..{_MAX_NONCE} bytes, lower-case hex"
                )
        if node_id == config.node_id:
            raise PeerProtocolError("self_connection", f"node {_snippet(node_id)} dialled itself")
        self._check_placement(frame, node_id)
        # Unknown feature names are ignored (a newer peer), malformed ones too: a feature is
        # only ever an offer, never required, so a bad list just means "none of ours".
        offered = frame.fields.get("features", "")
        features = frozenset(name for name in offered.split(",")[:_MAX_FEATURES]
                             if name in config.features)
        return _PeerHello(node_id, address, nonce, features)

    def _check_placement(self, frame: Frame, peer: str) -> None:
        """Refuse a peer that places keys differently (L{HandshakeConfig.replicas}); a
        side that sends no placement (a tool) is not checked. The message names both
        nodes: it is read on both sides."""
        config = self._config
        for key, ours, what in (("replicas", config.replicas, "replication factor (--replicas)"),
                                ("vnodes", config.vnodes, "vnodes per node")):
            theirs = frame.fields.get(key)
            if theirs is None:
                continue
            if not _DECIMAL.fullmatch(theirs) or not 1 <= int(theirs) <= MAX_PLACEMENT:
                raise PeerProtocolError(
                    "bad_hello", f"{key} {_snippet(theirs)} is not a decimal 1..{MAX_PLACEMENT}")
            if ours is not None and int(theirs) != ours:
                raise PeerProtocolError(
                    "placement_mismatch",
                    f"node {_snippet(peer)} has {key}={theirs} but node "
                    f"{_snippet(config.node_id)} has {key}={ours}: every node of a cluster "
                    f"needs the same {what}, or their quorums stop overlapping",
                )

    @staticmethod
    def _text(frame: Frame, key: str) -> str:
        raw = _required(frame, key)
        try:
            return unquote_text(raw)
        except PeerProtocolError as error:
            raise PeerProtocolError("bad_hello", f"{key}: {error.message}") from None


# Request matching --------------------------------------------------------------


class TooManyOutstandingRequests(Exception):
    """Refused to send: as many requests as allowed already await responses."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} requests already outstanding on this connection")
        self.limit = limit


class PendingRequests:
    """Requests sent on one connection that still await a response.

    Responses carry their request's id; L{resolve} matches them, L{expire}
    drops requests whose deadline passed (a late response then resolves to
    False and is ignored). Bounding the count bounds what a slow peer can make
    us hold in memory.
    """

    def __init__(self, max_outstanding: int) -> None:
        if max_outstanding < 1:
            raise ValueError("max_outstanding must be >= 1")
        self.max_outstanding = max_outstanding
        self._deadlines: dict[int, float] = {}
        # Min-heap of (deadline, id); resolved entries are skipped lazily and
        # compacted away so the heap stays proportional to what is pending.
        self._heap: list[tuple[float, int]] = []

    def __len__(self) -> int:
        return len(self._deadlines)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._deadlines

    def register(self, request_id: int, deadline: float) -> None:
        """Record a request about to be sent.

        @raise TooManyOutstandingRequests: the limit is reached; do not send.
        @raise ValueError: the id is 0 (reserved) or already pending (our bug).
        """
        if request_id == CONNECTION_REQUEST_ID:
            raise ValueError("request id 0 is reserved for connection-level frames")
        if request_id in self._deadlines:
            raise ValueError(f"request id {request_id} is already pending")
        if len(self._deadlines) >= self.max_outstanding:
            raise TooManyOutstandingRequests(self.max_outstanding)
        self._deadlines[request_id] = deadline
        heapq.heappush(self._heap, (deadline, request_id))

    def resolve(self, frame: Frame) -> bool:
        """Match a response; True if it answered a pending request (now resolved)."""
        if self._deadlines.pop(frame.request_id, None) is None:
            return False
        if len(self._heap) > 2 * len(self._deadlines) + 64:
            self._heap = [(deadline, rid) for rid, deadline in self._deadlines.items()]
            heapq.heapify(self._heap)
        return True

    def expire(self, now: float) -> list[int]:
        """Remove and return, earliest deadline first, the ids due at or before C{now}."""
        expired = []
        while self._heap and self._heap[0][0] <= now:
            deadline, request_id = heapq.heappop(self._heap)
            if self._deadlines.get(request_id) == deadline:
                del self._deadlines[request_id]
                expired.append(request_id)
        return expired

    def next_deadline(self) -> float | None:
        """When the adapter's single timer should next call L{expire}; None if idle."""
        while self._heap:
            deadline, request_id = self._heap[0]
            if self._deadlines.get(request_id) == deadline:
                return deadline
            heapq.heappop(self._heap)
        return None


# -- INCR (docs/peer-protocol.md §5.2) --------------------------------------------------------

_DELTA = re.compile(r"-?(?:0|[1-9][0-9]{0,18})")
_CONSISTENCY_NAMES = frozenset({"one", "quorum", "all"})
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class IncrRequest:
    """A parsed C{INCR}: add C{delta} to the key's counter; C{consistency} is None (the
    cluster's W) or one of C{one}, C{quorum}, C{all}."""

    key: bytes
    delta: int
    consistency: str | None = None


def incr_frame(request: IncrRequest) -> Frame:
    """The C{INCR} request frame for C{request} (request id 0: the pool assigns one)."""
    fields = {"key": quote(request.key), "delta": str(request.delta)}
    if request.consistency is not None:
        fields["consistency"] = request.consistency
    return Frame("INCR", 0, fields)


def parse_incr(frame: Frame) -> IncrRequest:
    """Validate an C{INCR} frame's fields.

    @raise PeerProtocolError: C{bad_request} when C{key} or C{delta} is missing, C{delta} is
        not a canonical decimal int64 (no C{+}, no leading zeros, no C{-0}), C{consistency}
        is not C{one}/C{quorum}/C{all}, or a payload is attached.
    """
    fields = frame.fields
    if "key" not in fields or "delta" not in fields:
        raise PeerProtocolError("bad_request", "INCR needs the key and delta fields")
    text = fields["delta"]
    if not _DELTA.fullmatch(text) or text == "-0":
        raise PeerProtocolError("bad_request", f"INCR delta is not a decimal integer: "
                                               f"{_snippet(text)}")
    delta = int(text)
    if not _INT64_MIN <= delta <= _INT64_MAX:
        raise PeerProtocolError("bad_request", "INCR delta is outside int64")
    consistency = fields.get("consistency")
    if consistency is not None and consistency not in _CONSISTENCY_NAMES:
        raise PeerProtocolError("bad_request", f"INCR consistency must be one, quorum or all: "
                                               f"{_snippet(consistency)}")
    if frame.payload:
        raise PeerProtocolError("bad_request", "INCR carries no payload")
    return IncrRequest(unquote(fields["key"]), delta, consistency)


# -- PUT_BATCH (docs/peer-protocol.md §5.2) ----------------------------------------------------
#
#   PUT_BATCH <id> len=<n>  + count(u32) (kind(u8) key_len(u32) key record_len(u32) record)*
#   VAL <id> len=<n>        + count(u32) (reason_len(u8) reason)*     reason "" = applied (ACK)
#
# kind 0 is a PUT, 1 a DEL. Sent only on connections whose peer offered FEATURE_PUT_BATCH.

_BATCH_KINDS = ("PUT", "DEL")
_BATCH_KIND_CODES = {"PUT": 0, "DEL": 1}
_ENTRY_HEAD = struct.Struct(">BI")
_ENTRY_OVERHEAD = 9  # kind, key length, record length
#: Key length -> the struct of an entry's kind, key length, key and record length.
_ENTRY_LAYOUTS: dict[int, struct.Struct] = {}
_CACHED_KEY_LENGTHS = 512  # longer keys are rare: their structs are built, not kept
_REASON = re.compile(r"[a-z0-9_]{1,64}")
_NO_BATCH_FIELDS: MappingProxyType[str, str] = MappingProxyType({})


class BatchEntry(NamedTuple):
    """One record of a C{PUT_BATCH}: C{verb} is C{PUT} or C{DEL}, as for the single verbs."""

    verb: str
    key: bytes
    record: bytes


def put_batch_frames(
    entries: Sequence[BatchEntry | tuple[Any, ...]],
    max_records: int = MAX_BATCH_RECORDS,
    max_bytes: int = MAX_BATCH_BYTES,
) -> list[tuple[Frame, int]]:
    """The C{PUT_BATCH} frames carrying C{entries} in order, each with how many it holds.

    An entry is a L{BatchEntry} or any tuple starting with its three fields (verb, key,
    record): a sender can keep what it needs per record in the same tuple. A frame closes at C{max_records} records or before its payload would pass C{max_bytes}
    (a record larger than that travels alone).

    @raise InvalidFrameError: a verb other than PUT/DEL, or a key longer than
        L{MAX_BATCH_KEY} (our bug: the coordinator checks keys first).
    """
    if not 1 <= max_records <= MAX_BATCH_RECORDS:
        raise ValueError(f"max_records must be in 1..{MAX_BATCH_RECORDS}")
    frames: list[tuple[Frame, int]] = []
    parts: list[bytes] = []
    count = size = 0
    codes = _BATCH_KIND_CODES
    layouts = _ENTRY_LAYOUTS
    for entry in entries:
        verb, key, record = entry[0], entry[1], entry[2]
        code = codes.get(verb)
        if code is None:
            raise InvalidFrameError("bad_request", f"{verb!r} cannot travel in a PUT_BATCH")
        key_len = len(key)
        layout = layouts.get(key_len)
        if layout is None:
            if key_len > MAX_BATCH_KEY:
                raise InvalidFrameError("bad_request", f"key of {key_len} bytes in a PUT_BATCH")
            layout = struct.Struct(f">BI{key_len}sI")
            if key_len <= _CACHED_KEY_LENGTHS:
                layouts[key_len] = layout
        entry_size = _ENTRY_OVERHEAD + key_len + len(record)
        if count and (count >= max_records or size + entry_size > max_bytes):
            frames.append((_batch_frame(count, parts), count))
            parts = []
            count = size = 0
        # One pack for kind, key length, key and record length (by key length, cached).
        parts += (layout.pack(code, key_len, key, len(record)), record)
        count += 1
        size += entry_size
    if count:
        frames.append((_batch_frame(count, parts), count))
    return frames


def _batch_frame(count: int, parts: list[bytes], verb: str = "PUT_BATCH") -> Frame:
    """A C{PUT_BATCH} or C{GET_BATCH} frame: the entry count, then the entries' parts."""
    return Frame._trusted(verb, 0, _NO_BATCH_FIELDS, _U32.pack(count) + b"".join(parts))


def parse_put_batch(frame: Frame) -> list[tuple[str, bytes, bytes]]:
    """The entries of a received C{PUT_BATCH}: C{(verb, key, record)}, the fields of a
    L{BatchEntry} as plain tuples (a replica parses one per replicated write, and making a
    named tuple cost 0.28 us of the 0.63 per entry, measured).

    The frame as a whole is refused when malformed: a record that decodes badly is the
    receiver's per-record business, but a broken entry layout loses the framing of the rest.

    @raise PeerProtocolError: C{bad_request} for a missing payload, a count of 0 or above
        L{MAX_BATCH_RECORDS}, an unknown kind, an empty or too long key, an empty record,
        truncation or trailing bytes.
    """
    data = frame.payload
    if len(data) < 4:
        raise PeerProtocolError("bad_request", "PUT_BATCH carries no entry count")
    (count,) = _U32.unpack_from(data, 0)
    if not 1 <= count <= MAX_BATCH_RECORDS:
        raise PeerProtocolError(
            "bad_request", f"PUT_BATCH holds {count} records, allowed 1..{MAX_BATCH_RECORDS}")
    entries: list[tuple[str, bytes, bytes]] = []
    append = entries.append
    unpack = _ENTRY_HEAD.unpack_from
    u32 = _U32.unpack_from
    kinds = _BATCH_KINDS
    offset = 4
    size = len(data)
    try:
        for _ in range(count):
            code, key_len = unpack(data, offset)
            if code >= len(kinds):
                raise PeerProtocolError("bad_request", f"PUT_BATCH entry kind {code} is unknown")
            if not 0 < key_len <= MAX_BATCH_KEY:
                raise PeerProtocolError("bad_request", f"PUT_BATCH key length {key_len}")
            start = offset + 5
            end = start + key_len
            (record_len,) = u32(data, end)
            record_start = end + 4
            offset = record_start + record_len
            if not record_len or offset > size:
                raise PeerProtocolError("bad_request", "PUT_BATCH record is empty or truncated")
            append((kinds[code], data[start:end], data[record_start:offset]))
    except struct.error:
        raise PeerProtocolError("bad_request", "PUT_BATCH entry is truncated") from None
    if offset != size:
        raise PeerProtocolError("bad_request", f"{size - offset} bytes after the last entry")
    return entries


def batch_outcomes_frame(outcomes: Sequence[str | None]) -> Frame:
    """The C{VAL} answering a C{PUT_BATCH}: per record, None when applied (as an C{ACK}
    would say) or the C{NACK} reason code refusing it (C{storage_error}, C{bad_request}...).

    @raise InvalidFrameError: a reason that is not C{[a-z0-9_]{1,64}} (our bug).
    """
    head = _U32.pack(len(outcomes))
    if not any(outcomes):
        payload = head + bytes(len(outcomes))
    else:
        parts = [head]
        for reason in outcomes:
            if reason is None:
                parts.append(b"\x00")
                continue
            if not _REASON.fullmatch(reason):
                raise InvalidFrameError("bad_request", f"reason {_snippet(reason)} is invalid")
            parts.append(bytes((len(reason),)) + reason.encode("ascii"))
        payload = b"".join(parts)
    return Frame._trusted("VAL", 0, _NO_BATCH_FIELDS, payload)


def parse_batch_outcomes(frame: Frame, expected: int) -> list[str | None]:
    """Per-record outcomes from the C{VAL} answering a C{PUT_BATCH} of C{expected} records.

    @raise PeerProtocolError: C{bad_request} when the answer does not hold exactly
        C{expected} well-formed outcomes.
    """
    data = frame.payload
    if len(data) == 4 + expected and data.count(0, 4) == expected:
        if _U32.unpack_from(data, 0)[0] == expected:
            return [None] * expected  # the usual answer: every record applied
    if len(data) < 4 or _U32.unpack_from(data, 0)[0] != expected:
        raise PeerProtocolError("bad_request", f"PUT_BATCH answer does not hold {expected} "
                                               "outcomes")
    outcomes: list[str | None] = []
    offset = 4
    try:
        for _ in range(expected):
            length = data[offset]
            offset += 1
            if not length:
                outcomes.append(None)
                continue
            reason = data[offset:offset + length].decode("ascii")
            offset += length
            if not _REASON.fullmatch(reason):
                raise PeerProtocolError("bad_request", f"bad reason {_snippet(reason)}")
            outcomes.append(reason)
    except (IndexError, UnicodeDecodeError):
        raise PeerProtocolError("bad_request", "PUT_BATCH answer is truncated") from None
    if offset != len(data):
        raise PeerProtocolError("bad_request", "trailing bytes after the PUT_BATCH outcomes")
    return outcomes


# -- GET_BATCH (docs/peer-protocol.md §5.2.2) ---------------------------------------------------
#
#   GET_BATCH <id> len=<n>  + count(u32) (key_len(u32) key)*
#   VAL <id> len=<n>        + count(u32) (record_len(u32) record)*
#
# record_len 0: the replica holds nothing for the key; 0xFFFFFFFF: the record was left out to
# keep the answer near MAX_BATCH_BYTES (ask for it with GET). Sent only on connections whose
# peer offered FEATURE_GET_BATCH.

_LEFT_OUT = 0xFFFFFFFF


class _NotSent:
    """The type of L{NOT_SENT}."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_SENT"


#: What L{parse_get_batch_answer} gives for a record the replica left out of its answer
#: (the answer would have grown past L{MAX_BATCH_BYTES}): ask for that key with C{GET}.
NOT_SENT: Any = _NotSent()


def get_batch_frames(
    entries: Sequence[bytes | tuple[Any, ...]],
    max_records: int = MAX_BATCH_RECORDS,
    max_bytes: int = MAX_BATCH_BYTES,
) -> list[tuple[Frame, int]]:
    """The C{GET_BATCH} frames asking for the keys of C{entries} in order, each with how many
    it holds. An entry is a key or any tuple starting with one (a sender keeps what it needs
    per key in the same tuple). A frame closes at C{max_records} keys or before its payload
    would pass C{max_bytes}.

    @raise InvalidFrameError: an empty key or one longer than L{MAX_BATCH_KEY} (our bug: the
        coordinator checks keys first).
    """
    if not 1 <= max_records <= MAX_BATCH_RECORDS:
        raise ValueError(f"max_records must be in 1..{MAX_BATCH_RECORDS}")
    frames: list[tuple[Frame, int]] = []
    parts: list[bytes] = []
    count = size = 0
    u32 = _U32.pack
    for entry in entries:
        key: bytes = entry if type(entry) is bytes else entry[0]  # type: ignore[assignment]
        if not 0 < len(key) <= MAX_BATCH_KEY:
            raise InvalidFrameError("bad_request", f"key of {len(key)} bytes in a GET_BATCH")
        entry_size = 4 + len(key)
        if count and (count >= max_records or size + entry_size > max_bytes):
            frames.append((_batch_frame(count, parts, "GET_BATCH"), count))
            parts = []
            count = size = 0
        parts += (u32(len(key)), key)
        count += 1
        size += entry_size
    if count:
        frames.append((_batch_frame(count, parts, "GET_BATCH"), count))
    return frames


def parse_get_batch(frame: Frame) -> list[bytes]:
    """The keys of a received C{GET_BATCH}.

    @raise PeerProtocolError: C{bad_request} for a missing payload, a count of 0 or above
        L{MAX_BATCH_RECORDS}, an empty or too long key, truncation or trailing bytes.
    """
    data = frame.payload
    if len(data) < 4:
        raise PeerProtocolError("bad_request", "GET_BATCH carries no key count")
    (count,) = _U32.unpack_from(data, 0)
    if not 1 <= count <= MAX_BATCH_RECORDS:
        raise PeerProtocolError(
            "bad_request", f"GET_BATCH holds {count} keys, allowed 1..{MAX_BATCH_RECORDS}")
    keys: list[bytes] = []
    append = keys.append
    u32 = _U32.unpack_from
    offset = 4
    size = len(data)
    try:
        for _ in range(count):
            (key_len,) = u32(data, offset)
            if not 0 < key_len <= MAX_BATCH_KEY:
                raise PeerProtocolError("bad_request", f"GET_BATCH key length {key_len}")
            start = offset + 4
            offset = start + key_len
            if offset > size:
                raise PeerProtocolError("bad_request", "GET_BATCH key is truncated")
            append(data[start:offset])
    except struct.error:
        raise PeerProtocolError("bad_request", "GET_BATCH entry is truncated") from None
    if offset != size:
        raise PeerProtocolError("bad_request", f"{size - offset} bytes after the last key")
    return keys


def get_batch_answer(records: Sequence[bytes | None], max_bytes: int = MAX_BATCH_BYTES) -> Frame:
    """The C{VAL} answering a C{GET_BATCH}: per key, its record or None (nothing held).

    Records go in order while the payload stays within C{max_bytes}; the first one always
    goes (a single GET would carry it too). A record that would pass the bound is left out
    (L{NOT_SENT} at the other end), so the answer stays bounded whatever the values' sizes.
    """
    u32 = _U32.pack
    parts = [u32(len(records))]
    size = 4
    carried = False  # a record went in already
    for record in records:
        if not record:
            parts.append(b"\x00\x00\x00\x00")
            size += 4
        elif carried and size + 4 + len(record) > max_bytes:
            parts.append(u32(_LEFT_OUT))
            size += 4
        else:
            parts += (u32(len(record)), record)
            size += 4 + len(record)
            carried = True
    return Frame._trusted("VAL", 0, _NO_BATCH_FIELDS, b"".join(parts))


def parse_get_batch_answer(frame: Frame, expected: int) -> list[bytes | None]:
    """Per key, the record (None: nothing held; L{NOT_SENT}: left out, ask with C{GET}) from
    the C{VAL} answering a C{GET_BATCH} of C{expected} keys. Records are not decoded here.

    @raise PeerProtocolError: C{bad_request} when the answer does not hold exactly
        C{expected} well-formed entries.
    """
    data = frame.payload
    if len(data) < 4 or _U32.unpack_from(data, 0)[0] != expected:
        raise PeerProtocolError("bad_request", f"GET_BATCH answer does not hold {expected} "
                                               "records")
    records: list[bytes | None] = []
    append = records.append
    u32 = _U32.unpack_from
    offset = 4
    size = len(data)
    try:
        for _ in range(expected):
            (length,) = u32(data, offset)
            offset += 4
            if not length:
                append(None)
            elif length == _LEFT_OUT:
                append(NOT_SENT)
            else:
                end = offset + length
                if end > size:
                    raise PeerProtocolError("bad_request", "GET_BATCH answer is truncated")
                append(data[offset:end])
                offset = end
    except struct.error:
        raise PeerProtocolError("bad_request", "GET_BATCH answer is truncated") from None
    if offset != size:
        raise PeerProtocolError("bad_request", "trailing bytes after the GET_BATCH records")
    return records
