"""Tests for twistkv.core.peerwire: codec, spec agreement, handshake, request matching."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twistkv.core.peerwire import (
    DEFAULT_MAX_PAYLOAD,
    ERROR_CODES,
    FEATURE_GET_BATCH,
    FEATURE_PUT_BATCH,
    MAX_BATCH_KEY,
    MAX_BATCH_RECORDS,
    MAX_LINE,
    MAX_REQUEST_ID,
    NOT_SENT,
    PROTOCOL_VERSION,
    RESPONSE_VERBS,
    SUPPORTED_FEATURES,
    VERBS,
    BatchEntry,
    Established,
    Frame,
    FrameDecoder,
    Handshake,
    HandshakeConfig,
    HandshakeFailed,
    InvalidFrameError,
    PeerProtocolError,
    PendingRequests,
    Role,
    TooManyOutstandingRequests,
    batch_outcomes_frame,
    encode_frame,
    error_details,
    error_frame,
    get_batch_answer,
    get_batch_frames,
    parse_batch_outcomes,
    parse_get_batch,
    parse_get_batch_answer,
    parse_put_batch,
    put_batch_frames,
    quote,
    unquote,
    unquote_text,
)

SPEC = Path(__file__).resolve().parents[2] / "docs" / "peer-protocol.md"

# Strategies -------------------------------------------------------------------

verbs = st.one_of(st.sampled_from(sorted(VERBS)), st.from_regex(r"[A-Z_]{1,12}", fullmatch=True))
keys = st.from_regex(r"[a-z0-9_]{1,8}", fullmatch=True).filter(lambda key: key != "len")
values = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="="),
    max_size=20,
)
frames = st.builds(
    Frame,
    verb=verbs,
    request_id=st.integers(0, MAX_REQUEST_ID),
    fields=st.dictionaries(keys, values, max_size=5),
    payload=st.binary(max_size=64),
)


def encode_all(items: list[Frame]) -> bytes:
    return b"".join(encode_frame(frame) for frame in items)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[start:end] for start, end in zip(points, points[1:], strict=False)]


def decode_chunks(decoder: FrameDecoder, chunks: list[bytes]) -> list[Frame]:
    decoded: list[Frame] = []
    for chunk in chunks:
        decoded.extend(decoder.feed(chunk))
    return decoded


def decode_or_error(decoder: FrameDecoder, chunks: list[bytes]) -> None:
    """Feed chunks; only frames or PeerProtocolError with a registered code may result."""
    try:
        for frame in decode_chunks(decoder, chunks):
            assert isinstance(frame, Frame)
            encode_frame(frame)  # everything decoded is re-encodable
    except PeerProtocolError as error:
        assert error.code in ERROR_CODES


# Codec: round trips and exact bytes ---------------------------------------------


@settings(max_examples=150)
@given(st.lists(frames, max_size=8), st.lists(st.integers(0, 10_000), max_size=12))
def test_round_trip_in_any_chunking(items: list[Frame], cuts: list[int]) -> None:
    """Any valid frames, encoded back to back and fed in arbitrary chunks, decode identically."""
    data = encode_all(items)
    assert decode_chunks(FrameDecoder(), split_at(data, cuts)) == items


@given(st.lists(frames, min_size=1, max_size=4))
def test_round_trip_byte_by_byte(items: list[Frame]) -> None:
    """Feeding one byte at a time (the worst chunking) still decodes every frame exactly."""
    data = encode_all(items)
    assert decode_chunks(FrameDecoder(), [data[i : i + 1] for i in range(len(data))]) == items


@given(frames, st.integers(1, 2**63 - 1))
def test_encoding_under_another_request_id_equals_encoding_the_copy(
    frame: Frame, request_id: int
) -> None:
    """The adapter's shortcut (encode under a new id, no copy) gives the bytes of
    C{with_request_id}, and the frame itself keeps its id."""
    original = frame.request_id
    assert encode_frame(frame, request_id=request_id) == encode_frame(
        frame.with_request_id(request_id))
    assert frame.request_id == original


def test_encoding_is_the_documented_wire_form() -> None:
    """Header fields in order, len last and only with a payload, CRLF, then raw payload."""
    assert encode_frame(Frame("PING", 7)) == b"PING 7\r\n"
    assert (
        encode_frame(Frame("PUT", 5, {"key": quote("a b=c")}, b"x\r\ny"))
        == b"PUT 5 key=a%20b%3Dc len=4\r\nx\r\ny"
    )
    assert encode_frame(Frame("ACK", 1, {"note": ""})) == b"ACK 1 note=\r\n"


def test_bare_lf_is_accepted_for_nc_users() -> None:
    """A header ended by LF alone (nc without -C) decodes like one ended by CRLF."""
    assert FrameDecoder().feed(b"PING 1 a=b\nPONG 2\r\n") == [
        Frame("PING", 1, {"a": "b"}),
        Frame("PONG", 2),
    ]


def test_len_field_position_is_free_on_receive() -> None:
    """Receivers accept len anywhere in the header, not only last."""
    assert FrameDecoder().feed(b"VAL 3 len=2 a=b\r\nhi") == [Frame("VAL", 3, {"a": "b"}, b"hi")]


def test_payload_may_contain_line_ends_and_headers() -> None:
    """Payload bytes are raw: a CRLF or a header-looking text inside is not parsed."""
    payload = b"PING 1\r\n\n\x00\xff"
    data = encode_frame(Frame("VAL", 9, {}, payload)) + b"PONG 2\r\n"
    assert FrameDecoder().feed(data) == [Frame("VAL", 9, {}, payload), Frame("PONG", 2)]


# Codec: malformed input ----------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"\r\n", "bad_header"),
        (b"PING\r\n", "bad_header"),
        (b"PING  1\r\n", "bad_header"),
        (b"PING 1 \r\n", "bad_header"),
        (b" PING 1\r\n", "bad_header"),
        (b"PING\t1\r\n", "bad_header"),
        (b"PING 1 k=\xe9\r\n", "bad_header"),
        (b"PING 1\r\r\n", "bad_header"),
        (b"ping 1\r\n", "bad_verb"),
        (b"PING-X 1\r\n", "bad_verb"),
        (b"PING 01\r\n", "bad_request_id"),
        (b"PING -1\r\n", "bad_request_id"),
        (b"PING +1\r\n", "bad_request_id"),
        (b"PING 9223372036854775808\r\n", "bad_request_id"),
        (b"PING 1 novalue\r\n", "bad_field"),
        (b"PING 1 Key=v\r\n", "bad_field"),
        (b"PING 1 =v\r\n", "bad_field"),
        (b"PING 1 k=a=b\r\n", "bad_field"),
        (b"PING 1 k=1 k=2\r\n", "duplicate_field"),
        (b"PING 1 len=1 len=1\r\nx", "duplicate_field"),
        (b"PING 1 len=0\r\n", "bad_length"),
        (b"PING 1 len=01\r\n", "bad_length"),
        (b"PING 1 len=-1\r\n", "bad_length"),
        (b"PING 1 len=\r\n", "bad_length"),
        (b"PING 1 len=1" + b"0" * 40 + b"\r\n", "payload_too_large"),
    ],
)
def test_malformed_headers_are_refused_with_their_code(line: bytes, code: str) -> None:
    """Each kind of malformed header raises PeerProtocolError with the documented code."""
    with pytest.raises(PeerProtocolError) as raised:
        FrameDecoder().feed(line)
    assert raised.value.code == code
    assert code in ERROR_CODES


def test_line_limit_is_enforced_before_the_newline_arrives() -> None:
    """max_line bytes without LF fail at once; a line of exactly max_line (CRLF incl.) passes."""
    exact = b"PING 1 k=" + b"v" * (100 - len(b"PING 1 k=") - 2) + b"\r\n"
    assert len(exact) == 100
    assert FrameDecoder(max_line=100).feed(exact) == [Frame("PING", 1, {"k": "v" * 89})]
    decoder = FrameDecoder(max_line=100)
    assert decoder.feed(b"P" * 99) == []
    with pytest.raises(PeerProtocolError) as raised:
        decoder.feed(b"P")
    assert raised.value.code == "line_too_long"


def test_payload_limit_is_enforced_at_the_header() -> None:
    """A declared len above max_payload fails on the header alone; len == max_payload passes."""
    decoder = FrameDecoder(max_payload=10)
    with pytest.raises(PeerProtocolError) as raised:
        decoder.feed(b"PUT 1 len=11\r\n")  # no payload byte sent yet
    assert raised.value.code == "payload_too_large"
    assert FrameDecoder(max_payload=10).feed(b"PUT 1 len=10\r\n0123456789") == [
        Frame("PUT", 1, {}, b"0123456789")
    ]


def test_decoder_stays_failed_after_an_error() -> None:
    """After a protocol error the stream is out of sync; later valid bytes still fail."""
    decoder = FrameDecoder()
    with pytest.raises(PeerProtocolError):
        decoder.feed(b"bad\r\n")
    with pytest.raises(PeerProtocolError) as raised:
        decoder.feed(b"PING 1\r\n")
    assert raised.value.code == "bad_header"


def test_decoder_rejects_nonsensical_limits() -> None:
    """Limits that could never admit a frame are a configuration bug, caught at construction."""
    with pytest.raises(ValueError):
        FrameDecoder(max_line=1)
    with pytest.raises(ValueError):
        FrameDecoder(max_payload=-1)


@settings(max_examples=200)
@given(
    st.binary(max_size=300),
    st.lists(st.integers(0, 1000), max_size=6),
    st.integers(2, 80),
    st.integers(0, 40),
)
def test_random_bytes_yield_frames_or_protocol_error(
    data: bytes, cuts: list[int], max_line: int, max_payload: int
) -> None:
    """Arbitrary bytes under arbitrary (small) limits never raise anything but PeerProtocolError."""
    decode_or_error(FrameDecoder(max_line, max_payload), split_at(data, cuts))


@settings(max_examples=200)
@given(
    st.lists(frames, min_size=1, max_size=4),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
    st.integers(0, 10_000),
    st.lists(st.integers(0, 10_000), max_size=4),
)
def test_mutated_and_truncated_streams_yield_frames_or_protocol_error(
    items: list[Frame], flips: list[tuple[int, int]], keep: int, cuts: list[int]
) -> None:
    """Valid streams with bytes overwritten and then truncated only give frames or protocol errors."""
    data = bytearray(encode_all(items))
    for position, byte in flips:
        data[position % len(data)] = byte
    truncated = bytes(data[: keep % (len(data) + 1)])
    decode_or_error(FrameDecoder(max_line=200, max_payload=64), split_at(truncated, cuts))


# Frame construction ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("verb", "fields", "code"),
    [
        ("ping", {}, "bad_verb"),
        ("", {}, "bad_verb"),
        ("PING", {"Key": "v"}, "bad_field"),
        ("PING", {"len": "3"}, "bad_field"),
        ("PING", {"k": "a b"}, "bad_field"),
        ("PING", {"k": "a=b"}, "bad_field"),
        ("PING", {"k": "caf\u00e9"}, "bad_field"),
    ],
)
def test_invalid_frames_fail_where_they_are_built(
    verb: str, fields: dict[str, str], code: str
) -> None:
    """Building a frame that breaks the wire rules raises InvalidFrameError (our fault)."""
    with pytest.raises(InvalidFrameError) as raised:
        Frame(verb, 1, fields)
    assert raised.value.code == code


def test_request_id_and_payload_types_are_checked() -> None:
    """Out-of-range ids are invalid; a bool id or a str payload is a type error."""
    with pytest.raises(InvalidFrameError):
        Frame("PING", MAX_REQUEST_ID + 1)
    with pytest.raises(InvalidFrameError):
        Frame("PING", -1)
    with pytest.raises(TypeError):
        Frame("PING", True)
    with pytest.raises(TypeError):
        Frame("VAL", 1, {}, "text")  # type: ignore[arg-type]


def test_frame_fields_are_a_private_read_only_copy() -> None:
    """Mutating the dict a frame was built from, or its fields, cannot change the frame."""
    source = {"k": "v"}
    frame = Frame("PING", 1, source)
    source["k"] = "changed"
    assert frame.fields == {"k": "v"}
    with pytest.raises(TypeError):
        frame.fields["k"] = "x"  # type: ignore[index]


def test_with_request_id_is_replace_checking_only_the_id() -> None:
    """with_request_id() gives what dataclasses.replace() would, and refuses bad ids alike."""
    from dataclasses import replace

    frame = Frame("PUT", 0, {"key": "k"}, b"payload")
    moved = frame.with_request_id(7)
    assert moved == replace(frame, request_id=7)
    assert moved.fields == frame.fields and encode_frame(moved) == encode_frame(
        replace(frame, request_id=7)
    )
    with pytest.raises(TypeError):
        frame.with_request_id(True)
    for bad in (-1, MAX_REQUEST_ID + 1):
        with pytest.raises(InvalidFrameError) as raised:
            frame.with_request_id(bad)
        assert raised.value.code == "bad_request_id"


def test_remembered_names_do_not_skip_value_checks() -> None:
    """A verb and key seen before still have every value checked."""
    Frame("PING", 1, {"k": "ok"})
    with pytest.raises(InvalidFrameError):
        Frame("PING", 1, {"k": "a b"})
    with pytest.raises(TypeError):
        Frame("PING", True, {"k": "ok"})


@given(st.one_of(st.binary(max_size=30), st.text(max_size=30)))
def test_quote_matches_the_byte_table(value: str | bytes) -> None:
    """The no-escape shortcut gives exactly what the per-byte table gives."""
    raw = value.encode("utf-8") if isinstance(value, str) else value
    expected = "".join(chr(b) if 0x21 <= b <= 0x7E and b not in b"=%" else f"%{b:02X}" for b in raw)
    assert quote(value) == expected
    assert unquote(expected) == raw


def test_encoder_refuses_headers_over_the_line_limit() -> None:
    """A header a peer would refuse as too long is refused before sending."""
    frame = Frame("PUT", 1, {"key": "k" * 100})
    with pytest.raises(InvalidFrameError) as raised:
        encode_frame(frame, max_line=50)
    assert raised.value.code == "line_too_long"


# Quoting ---------------------------------------------------------------------------


@given(st.binary(max_size=100))
def test_quote_round_trips_bytes_into_legal_values(raw: bytes) -> None:
    """quote() yields a legal field value (no space, '=') and unquote() restores the bytes."""
    quoted = quote(raw)
    Frame("GET", 1, {"key": quoted})
    assert unquote(quoted) == raw


@given(st.text(max_size=50))
def test_quote_round_trips_text(text: str) -> None:
    """Text is quoted as UTF-8 and unquote_text() restores it."""
    assert unquote_text(quote(text)) == text


def test_quote_leaves_plain_printable_text_alone() -> None:
    """Readable keys stay readable on the wire; only space, '=', '%' and non-ASCII are escaped."""
    assert quote("user:42/a.b") == "user:42/a.b"
    assert quote("50% off=yes") == "50%25%20off%3Dyes"
    assert quote("é") == "%C3%A9"


@pytest.mark.parametrize("broken", ["%", "%4", "a%zz", "%+1", "% 1", "é"])
def test_unquote_refuses_broken_escapes(broken: str) -> None:
    """A stray or malformed escape is the peer's fault: bad_field."""
    with pytest.raises(PeerProtocolError) as raised:
        unquote(broken)
    assert raised.value.code == "bad_field"


def test_unquote_text_refuses_invalid_utf8() -> None:
    """Escapes that decode to invalid UTF-8 are refused rather than mangled."""
    with pytest.raises(PeerProtocolError) as raised:
        unquote_text("%FF")
    assert raised.value.code == "bad_field"


def test_error_frames_carry_code_and_readable_message() -> None:
    """error_frame() and error_details() round-trip; a sloppy peer's ERROR does not raise."""
    frame = error_frame(4, "unknown_verb", "FROB is not implemented")
    assert (
        encode_frame(frame)
        == b"ERROR 4 code=unknown_verb message=FROB%20is%20not%20implemented\r\n"
    )
    assert error_details(frame) == ("unknown_verb", "FROB is not implemented")
    assert error_details(Frame("ERROR", 0, {"message": "%zz"})) == ("unspecified", "%zz")


def test_protocol_error_converts_to_a_connection_error_frame() -> None:
    """A decoder error becomes the ERROR 0 frame the adapter sends before closing."""
    with pytest.raises(PeerProtocolError) as raised:
        FrameDecoder().feed(b"PUT 1 len=99999999999\r\n")
    frame = raised.value.to_frame()
    assert (frame.verb, frame.request_id) == ("ERROR", 0)
    assert error_details(frame)[0] == "payload_too_large"


# The spec and the code agree ---------------------------------------------------------


def spec_table(heading: str) -> list[list[str]]:
    """Rows (cells, backticks stripped) of the first table under the given '## ' heading."""
    text = SPEC.read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if line.startswith("| `"):
            rows.append([cell.strip().strip("`") for cell in line.strip("|").split("|")])
    return rows


def test_spec_verb_table_matches_verbs() -> None:
    """Every verb in VERBS is in the spec's verb table with the same purpose, and vice versa."""
    rows = spec_table("5. Verbs")
    assert {row[0]: row[3] for row in rows} == dict(VERBS)


def test_membership_verbs_are_registered() -> None:
    """Every verb core/membership.py puts on the wire is in VERBS, so the spec covers it."""
    from twistkv.core import membership

    assert set(membership.VERBS) <= set(VERBS)
    assert {verb for verb in VERBS if verb.startswith("SWIM_")} == set(membership.VERBS)


def test_every_verb_the_code_sends_or_serves_is_registered() -> None:
    """The spec test above compares VERBS with the spec; this one ties VERBS to the code:
    every verb written as a literal in a C{Frame(...)} or C{Frame._trusted(...)} call
    anywhere in twistkv/, and every verb a node module registers a handler for (its
    C{*_VERBS} tuple or set), is in VERBS, so an unregistered verb cannot reach the wire
    undocumented."""
    import ast

    package = Path(__file__).resolve().parents[2] / "twistkv"
    used: dict[str, str] = {}
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and node.args:
                func = node.func
                is_frame = (isinstance(func, ast.Name) and func.id == "Frame") or (
                    isinstance(func, ast.Attribute) and func.attr == "_trusted"
                    and isinstance(func.value, ast.Name) and func.value.id == "Frame")
                first = node.args[0]
                if is_frame and isinstance(first, ast.Constant) and isinstance(first.value, str):
                    used[first.value] = f"{path.name}:{node.lineno}"
            elif isinstance(node, ast.Assign) and any(
                    isinstance(target, ast.Name) and target.id.endswith("_VERBS")
                    for target in node.targets):
                for item in ast.walk(node.value):
                    if isinstance(item, ast.Constant) and isinstance(item.value, str):
                        used[item.value] = f"{path.name}:{node.lineno}"
    assert len(used) >= 20, used  # the scan found the code's verbs
    assert {"PUT_BATCH", "GET_BATCH", "INCR", "AE_TREE", "RB_FETCH", "SWIM_PING"} <= set(used)
    unregistered = {verb: where for verb, where in used.items() if verb not in VERBS}
    assert unregistered == {}


def test_spec_response_kind_matches_response_verbs() -> None:
    """The verbs the spec calls responses are exactly RESPONSE_VERBS (used to route frames)."""
    rows = spec_table("5. Verbs")
    assert {row[0] for row in rows if row[1] == "response"} == RESPONSE_VERBS


def test_spec_error_table_matches_error_codes() -> None:
    """Every error code in ERROR_CODES is in the spec's table with the same meaning, and vice versa."""
    assert {row[0]: row[1] for row in spec_table("6. Errors")} == dict(ERROR_CODES)


def test_spec_states_the_version_and_limits_in_code() -> None:
    """The spec's title version, line limit and default payload limit are the code's constants."""
    text = SPEC.read_text(encoding="utf-8")
    assert re.search(rf"^# twistkv peer protocol, version {PROTOCOL_VERSION}$", text, re.M)
    assert f"{MAX_LINE} bytes (fixed by the protocol)" in text
    assert f"({DEFAULT_MAX_PAYLOAD})" in text


def test_spec_example_session_decodes() -> None:
    """The nc example in the spec is valid protocol in both directions, refusal included."""
    text = SPEC.read_text(encoding="utf-8")
    session = text.split("## 9. Example session", 1)[1].split("```", 2)[1].splitlines()
    typed = FrameDecoder()
    typed_verbs = []
    with pytest.raises(PeerProtocolError) as raised:  # the session ends with a refused frame
        for line in session:
            if line.startswith("> "):
                typed_verbs += [frame.verb for frame in typed.feed(line[2:].encode() + b"\r\n")]
    assert typed_verbs == ["HELLO", "PING", "GET", "STATS", "FROB"]
    assert raised.value.code == "payload_too_large"
    answers = FrameDecoder()
    answered = []
    expecting_payload = False
    for line in session:
        if line.startswith("< "):
            raw = line[2:].encode()
            answered += answers.feed(raw if expecting_payload else raw + b"\r\n")
            expecting_payload = not expecting_payload and b" len=" in raw
    assert [frame.verb for frame in answered] == ["HELLO", "PONG", "VAL", "VAL", "ERROR", "ERROR"]
    assert error_details(answered[-1])[0] == raised.value.code


# Handshake -----------------------------------------------------------------------


#: What two current nodes agree on in the handshake.
BOTH = SUPPORTED_FEATURES


def config(
    node: str, secret: bytes | None = b"s3cret", cluster: str = "prod", version: int = 1,
    features: frozenset[str] = SUPPORTED_FEATURES,
) -> HandshakeConfig:
    return HandshakeConfig(cluster, node, f"{node}.example:7380", secret, version, features)


def wire(frame: Frame) -> Frame:
    """Send one frame through the codec, as the adapter would."""
    (decoded,) = FrameDecoder().feed(encode_frame(frame))
    return decoded


def run(initiator: Handshake, responder: Handshake) -> list[tuple[Role, Frame]]:
    """Pump frames between the two ends until both are quiet; return what each sent."""
    sent: list[tuple[Role, Frame]] = []
    queue = [(responder, frame) for frame in initiator.start().send]
    assert responder.start().send == ()
    sent += [(Role.INITIATOR, frame) for _, frame in queue]
    while queue:
        target, frame = queue.pop(0)
        if target.outcome is not None:
            continue  # the adapter would route it elsewhere or has closed
        step = target.receive(wire(frame))
        other = initiator if target is responder else responder
        queue += [(other, reply) for reply in step.send]
        sent += [(target.role, reply) for reply in step.send]
    return sent


def test_same_secret_establishes_both_sides() -> None:
    """HELLO, HELLO+proof, AUTH: both ends learn each other's identity, authenticated."""
    initiator = Handshake(Role.INITIATOR, config("a"), nonce=b"\x01" * 16)
    responder = Handshake(Role.RESPONDER, config("b"), nonce=b"\x02" * 16)
    sent = run(initiator, responder)
    assert [(role, frame.verb) for role, frame in sent] == [
        (Role.INITIATOR, "HELLO"),
        (Role.RESPONDER, "HELLO"),
        (Role.INITIATOR, "AUTH"),
    ]
    assert initiator.outcome == Established("b", "b.example:7380", authenticated=True, features=BOTH)
    assert responder.outcome == Established("a", "a.example:7380", authenticated=True, features=BOTH)


def test_no_secret_anywhere_establishes_in_two_frames() -> None:
    """Without secrets the handshake is HELLO/HELLO and reports unauthenticated peers."""
    initiator = Handshake(Role.INITIATOR, config("a", secret=None))
    responder = Handshake(Role.RESPONDER, config("b", secret=None))
    assert [frame.verb for _, frame in run(initiator, responder)] == ["HELLO", "HELLO"]
    assert initiator.outcome == Established("b", "b.example:7380", authenticated=False, features=BOTH)
    assert responder.outcome == Established("a", "a.example:7380", authenticated=False, features=BOTH)


def assert_both_fail(initiator: Handshake, responder: Handshake, code: str, words: str) -> None:
    run(initiator, responder)
    for side in (initiator, responder):
        assert isinstance(side.outcome, HandshakeFailed), side.role
        assert side.outcome.code == code
        assert words in side.outcome.message
    assert initiator.outcome.detected_by_peer != responder.outcome.detected_by_peer  # type: ignore[union-attr]


def test_wrong_secret_fails_on_both_sides() -> None:
    """Different secrets: the initiator rejects the responder's proof and tells it why."""
    initiator = Handshake(Role.INITIATOR, config("a", secret=b"one"), nonce=b"\x01" * 16)
    responder = Handshake(Role.RESPONDER, config("b", secret=b"two"), nonce=b"\x02" * 16)
    assert_both_fail(initiator, responder, "auth_failed", "cluster secrets differ")
    assert responder.outcome.detected_by_peer  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("initiator_secret", "responder_secret", "words"),
    [
        (b"s", None, "the peer requires a cluster secret but this node has none"),
        (None, b"s", "this node requires a cluster secret but the peer has none"),
    ],
)
def test_secret_on_one_side_only_fails_clearly(
    initiator_secret: bytes | None, responder_secret: bytes | None, words: str
) -> None:
    """A secret on one side only is auth_mismatch, explained from the responder's point of view."""
    initiator = Handshake(Role.INITIATOR, config("a", initiator_secret), nonce=b"\x01" * 16)
    responder = Handshake(Role.RESPONDER, config("b", responder_secret), nonce=b"\x02" * 16)
    assert_both_fail(initiator, responder, "auth_mismatch", words)


def test_wrong_cluster_fails_on_both_sides() -> None:
    """Nodes of different clusters never connect, whatever their secrets."""
    initiator = Handshake(Role.INITIATOR, config("a", cluster="prod"), nonce=b"\x01" * 16)
    responder = Handshake(Role.RESPONDER, config("b", cluster="staging"), nonce=b"\x02" * 16)
    assert_both_fail(initiator, responder, "cluster_mismatch", "'prod'")


@pytest.mark.parametrize(("ours", "theirs", "words"), [
    ({"replicas": 3, "vnodes": 150}, {"replicas": 2, "vnodes": 150},
     "node 'a' has replicas=3 but node 'b' has replicas=2: every node of a cluster needs the "
     "same replication factor (--replicas)"),
    ({"replicas": 3, "vnodes": 150}, {"replicas": 3, "vnodes": 64},
     "node 'a' has vnodes=150 but node 'b' has vnodes=64"),
])
def test_nodes_that_place_keys_differently_refuse_each_other(
        ours: dict[str, int], theirs: dict[str, int], words: str) -> None:
    """Two nodes with different replication factors (or vnodes per node) would compute
    different preference lists, so their quorums would not overlap: the handshake fails on
    both sides with placement_mismatch, naming both values, before any request flows."""
    initiator = Handshake(Role.INITIATOR, replace(config("a"), **ours), nonce=b"\x01" * 16)
    responder = Handshake(Role.RESPONDER, replace(config("b"), **theirs), nonce=b"\x02" * 16)
    assert_both_fail(initiator, responder, "placement_mismatch", words)


@pytest.mark.parametrize("announces", [True, False])
def test_a_side_that_announces_no_placement_is_not_checked(announces: bool) -> None:
    """A client that stores nothing (a tool: no replicas/vnodes in its HELLO) connects to a
    node whatever the node's placement, in either role; matching placements connect too."""
    node = replace(config("b"), replicas=3, vnodes=150)
    other = replace(config("a"), replicas=3, vnodes=150) if announces else config("a")
    for initiating, responding in ((other, node), (node, other)):
        initiator = Handshake(Role.INITIATOR, initiating, nonce=b"\x01" * 16)
        responder = Handshake(Role.RESPONDER, responding, nonce=b"\x02" * 16)
        run(initiator, responder)
        assert isinstance(initiator.outcome, Established)
        assert isinstance(responder.outcome, Established)


@pytest.mark.parametrize("value", ["0", "x", "-1", "100001", "03"])
def test_a_malformed_placement_is_a_bad_hello(value: str) -> None:
    """replicas/vnodes must be canonical decimals 1..100000, else bad_hello; and a node
    cannot be configured outside that range."""
    for key in ("replicas", "vnodes"):
        responder = Handshake(Role.RESPONDER, replace(config("b"), replicas=3),
                              nonce=b"\x02" * 16)
        responder.start()
        outcome = responder.receive(hello(**{key: value})).outcome
        assert isinstance(outcome, HandshakeFailed) and outcome.code == "bad_hello", key
    with pytest.raises(ValueError, match="replicas must be 1..100000"):
        replace(config("b"), replicas=0)


def test_wrong_version_fails_on_both_sides() -> None:
    """Peers of different protocol versions refuse each other, naming both versions."""
    initiator = Handshake(Role.INITIATOR, config("a", version=2), nonce=b"\x01" * 16)
    responder = Handshake(Role.RESPONDER, config("b"), nonce=b"\x02" * 16)
    assert_both_fail(initiator, responder, "version_mismatch", "version 2, this node speaks 1")


def test_self_connection_is_refused() -> None:
    """A node that dials its own address (e.g. itself in the seed list) is told so."""
    initiator = Handshake(Role.INITIATOR, config("a"), nonce=b"\x01" * 16)
    responder = Handshake(Role.RESPONDER, config("a"), nonce=b"\x02" * 16)
    assert_both_fail(initiator, responder, "self_connection", "'a'")


def recorded_session() -> list[tuple[Role, Frame]]:
    initiator = Handshake(Role.INITIATOR, config("a"), nonce=b"\x01" * 16)
    responder = Handshake(Role.RESPONDER, config("b"), nonce=b"\x02" * 16)
    return run(initiator, responder)


def test_replayed_initiator_frames_fail_against_a_fresh_nonce() -> None:
    """An eavesdropper replaying A's HELLO and AUTH to B is refused: B's nonce is new."""
    (_, hello), _, (_, auth) = recorded_session()
    responder = Handshake(Role.RESPONDER, config("b"), nonce=b"\x03" * 16)
    responder.start()
    assert responder.receive(hello).outcome is None
    step = responder.receive(auth)
    assert isinstance(step.outcome, HandshakeFailed)
    assert step.outcome.code == "auth_failed"
    assert [error_details(frame)[0] for frame in step.send] == ["auth_failed"]


def test_replayed_responder_hello_fails_against_a_fresh_nonce() -> None:
    """An impostor replaying B's HELLO+proof to a dialling A is refused: A's nonce is new."""
    _, (_, hello), _ = recorded_session()
    initiator = Handshake(Role.INITIATOR, config("a"), nonce=b"\x04" * 16)
    initiator.start()
    step = initiator.receive(hello)
    assert isinstance(step.outcome, HandshakeFailed)
    assert step.outcome.code == "auth_failed"


def test_reflected_responder_proof_fails_as_auth() -> None:
    """Echoing the responder's own proof back as AUTH does not pass."""
    attacker = Handshake(Role.INITIATOR, config("a"), nonce=b"\x01" * 16)
    responder = Handshake(Role.RESPONDER, config("b"), nonce=b"\x02" * 16)
    responder.start()
    (hello,) = attacker.start().send
    (reply,) = responder.receive(hello).send
    step = responder.receive(Frame("AUTH", 0, {"proof": reply.fields["proof"]}))
    assert isinstance(step.outcome, HandshakeFailed) and step.outcome.code == "auth_failed"


def hello(**changes: str | None) -> Frame:
    """A valid HMAC HELLO from node x, with fields changed (None removes one)."""
    fields: dict[str, str | None] = {
        "version": "1",
        "cluster": "prod",
        "node": "x",
        "addr": "",
        "auth": "hmac-sha256",
        "nonce": "ab" * 16,
    }
    fields.update(changes)
    return Frame("HELLO", 0, {key: value for key, value in fields.items() if value is not None})


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (Frame("PING", 1), "handshake_required"),
        (hello(version=None), "bad_hello"),
        (hello(version="x1"), "bad_hello"),
        (hello(node=""), "bad_hello"),
        (hello(node="%zz"), "bad_hello"),
        (hello(addr=None), "bad_hello"),
        (hello(auth="rot13"), "bad_hello"),
        (hello(nonce=None), "bad_hello"),
        (hello(nonce="AB" * 16), "bad_hello"),
        (hello(nonce="ab"), "bad_hello"),
        (hello(nonce="zz" * 16), "bad_hello"),
        (hello(version="2", cluster=None), "version_mismatch"),
        (hello(cluster="other"), "cluster_mismatch"),
    ],
)
def test_responder_refuses_invalid_first_frames(frame: Frame, code: str) -> None:
    """Anything but a complete, valid HELLO gets ERROR 0 with the right code, then close."""
    responder = Handshake(Role.RESPONDER, config("b"), nonce=b"\x02" * 16)
    responder.start()
    step = responder.receive(frame)
    assert isinstance(step.outcome, HandshakeFailed) and step.outcome.code == code
    (error,) = step.send
    assert (error.verb, error.request_id, error_details(error)[0]) == ("ERROR", 0, code)


def test_refusals_quote_hostile_input_briefly() -> None:
    """A huge bogus verb is cut short in the refusal, so the ERROR frame still fits a line."""
    responder = Handshake(Role.RESPONDER, config("b"), nonce=b"\x02" * 16)
    responder.start()
    step = responder.receive(Frame("X" * 60_000, 1))
    assert len(encode_frame(step.send[0])) < 200


def test_responder_requires_auth_after_its_hello() -> None:
    """With a secret, a request sent instead of AUTH is refused before it is served."""
    initiator = Handshake(Role.INITIATOR, config("a"), nonce=b"\x01" * 16)
    responder = Handshake(Role.RESPONDER, config("b"), nonce=b"\x02" * 16)
    responder.start()
    responder.receive(initiator.start().send[0])
    step = responder.receive(Frame("GET", 1, {"key": "k"}))
    assert isinstance(step.outcome, HandshakeFailed) and step.outcome.code == "handshake_required"
    missing = Handshake(Role.RESPONDER, config("b"), nonce=b"\x02" * 16)
    missing.start()
    missing.receive(Handshake(Role.INITIATOR, config("a"), nonce=b"\x01" * 16).start().send[0])
    failed = missing.receive(Frame("AUTH", 0)).outcome
    assert isinstance(failed, HandshakeFailed) and failed.code == "bad_hello"


def test_handshake_misuse_is_a_local_error() -> None:
    """Missing/short nonces with a secret, empty secrets, and out-of-order calls raise ValueError."""
    with pytest.raises(ValueError):
        Handshake(Role.INITIATOR, config("a"))
    with pytest.raises(ValueError):
        Handshake(Role.INITIATOR, config("a"), nonce=b"short")
    with pytest.raises(ValueError):
        config("a", secret=b"")
    with pytest.raises(ValueError):
        config("n" * 256)
    shake = Handshake(Role.RESPONDER, config("b", secret=None))
    with pytest.raises(ValueError):
        shake.receive(Frame("HELLO", 0))
    shake.start()
    with pytest.raises(ValueError):
        shake.start()
    shake.receive(Frame("PING", 1))
    with pytest.raises(ValueError):
        shake.receive(Frame("PING", 2))


@settings(max_examples=60)
@given(
    st.sampled_from([None, b"one", b"two"]),
    st.sampled_from([None, b"one", b"two"]),
    st.sampled_from(["prod", "prod", "staging"]),
    st.binary(min_size=16, max_size=16),
    st.binary(min_size=16, max_size=16),
)
def test_handshake_always_ends_on_both_sides_and_agrees(
    secret_i: bytes | None, secret_r: bytes | None, cluster: str, nonce_i: bytes, nonce_r: bytes
) -> None:
    """Both ends always reach an outcome; they connect iff cluster and secret match, else share a code."""
    initiator = Handshake(Role.INITIATOR, config("a", secret_i), nonce=nonce_i)
    responder = Handshake(Role.RESPONDER, config("b", secret_r, cluster=cluster), nonce=nonce_r)
    run(initiator, responder)
    if cluster == "prod" and secret_i == secret_r:
        assert isinstance(initiator.outcome, Established)
        assert isinstance(responder.outcome, Established)
    else:
        assert isinstance(initiator.outcome, HandshakeFailed)
        assert isinstance(responder.outcome, HandshakeFailed)
        assert initiator.outcome.code == responder.outcome.code


# Request matching ----------------------------------------------------------------


def test_pending_requests_match_responses_by_id() -> None:
    """A response resolves its request once; unknown and repeated responses resolve nothing."""
    pending = PendingRequests(max_outstanding=4)
    pending.register(1, deadline=10.0)
    pending.register(2, deadline=11.0)
    assert pending.resolve(Frame("ACK", 2))
    assert not pending.resolve(Frame("ACK", 2))
    assert not pending.resolve(Frame("ACK", 3))
    assert 1 in pending and 2 not in pending and len(pending) == 1


def test_expired_requests_are_dropped_and_late_responses_ignored() -> None:
    """expire(now) returns ids due by now, earliest first; their late responses resolve nothing."""
    pending = PendingRequests(max_outstanding=8)
    for request_id, deadline in [(1, 5.0), (2, 3.0), (3, 9.0)]:
        pending.register(request_id, deadline)
    assert pending.next_deadline() == 3.0
    assert pending.expire(4.9) == [2]
    assert pending.expire(5.0) == [1]
    assert pending.next_deadline() == 9.0
    assert not pending.resolve(Frame("VAL", 1))
    assert pending.resolve(Frame("VAL", 3))
    assert pending.next_deadline() is None and pending.expire(100.0) == []


def test_outstanding_limit_refuses_then_frees() -> None:
    """Beyond max_outstanding, register() refuses clearly; a resolution makes room again."""
    pending = PendingRequests(max_outstanding=2)
    pending.register(1, 1.0)
    pending.register(2, 1.0)
    with pytest.raises(TooManyOutstandingRequests, match="2 requests already outstanding"):
        pending.register(3, 1.0)
    pending.resolve(Frame("ACK", 1))
    pending.register(3, 1.0)
    assert len(pending) == 2


def test_register_refuses_reserved_and_duplicate_ids() -> None:
    """Id 0 is for connection frames; registering a pending id twice is a local bug."""
    pending = PendingRequests(max_outstanding=2)
    with pytest.raises(ValueError):
        pending.register(0, 1.0)
    pending.register(5, 1.0)
    with pytest.raises(ValueError):
        pending.register(5, 2.0)
    with pytest.raises(ValueError):
        PendingRequests(max_outstanding=0)


def test_reused_id_keeps_only_its_new_deadline() -> None:
    """An id resolved and registered again expires at its new deadline, not the old one."""
    pending = PendingRequests(max_outstanding=2)
    pending.register(1, 5.0)
    pending.resolve(Frame("ACK", 1))
    pending.register(1, 10.0)
    assert pending.expire(6.0) == []
    assert pending.next_deadline() == 10.0
    assert pending.expire(10.0) == [1]


def test_resolved_requests_do_not_accumulate() -> None:
    """Many resolved requests leave no residue: the deadline heap is compacted (white-box),
    and expiry still reports exactly the requests left pending."""
    pending = PendingRequests(max_outstanding=4)
    pending.register(1, 1000.0)
    for request_id in range(2, 1002):
        pending.register(request_id, float(request_id))
        assert pending.resolve(Frame("ACK", request_id))
    assert len(pending._heap) <= 2 * len(pending) + 65
    assert pending.next_deadline() == 1000.0
    assert pending.expire(2000.0) == [1]


operations = st.lists(
    st.one_of(
        st.tuples(st.just("register"), st.integers(1, 5), st.integers(0, 20)),
        st.tuples(st.just("resolve"), st.integers(1, 5), st.just(0)),
        st.tuples(st.just("expire"), st.just(0), st.integers(0, 20)),
    ),
    max_size=60,
)


@settings(max_examples=150)
@given(operations, st.integers(1, 6))
def test_pending_requests_agree_with_a_dict_model(
    ops: list[tuple[str, int, int]], limit: int
) -> None:
    """Against a plain dict model: same membership, expiries (in deadline order) and next deadline."""
    pending = PendingRequests(max_outstanding=limit)
    model: dict[int, float] = {}
    for op, request_id, time in ops:
        if op == "register":
            if request_id in model:
                continue
            if len(model) >= limit:
                with pytest.raises(TooManyOutstandingRequests):
                    pending.register(request_id, float(time))
                continue
            pending.register(request_id, float(time))
            model[request_id] = float(time)
        elif op == "resolve":
            assert pending.resolve(Frame("ACK", request_id)) == (
                model.pop(request_id, None) is not None
            )
        else:
            due = sorted((d, rid) for rid, d in model.items() if d <= time)
            assert pending.expire(float(time)) == [rid for _, rid in due]
            for _, rid in due:
                del model[rid]
        assert len(pending) == len(model)
        assert pending.next_deadline() == (min(model.values()) if model else None)


# -- INCR --------------------------------------------------------------------------------------


@given(st.binary(max_size=40), st.integers(-(2**63), 2**63 - 1),
       st.sampled_from([None, "one", "quorum", "all"]))
def test_incr_frame_round_trips_through_the_wire(
    key: bytes, delta: int, consistency: str | None
) -> None:
    """An INCR request survives encoding, decoding and parsing unchanged."""
    from twistkv.core.peerwire import IncrRequest, incr_frame, parse_incr

    request = IncrRequest(key, delta, consistency)
    (decoded,) = FrameDecoder().feed(encode_frame(incr_frame(request).with_request_id(9)))
    assert parse_incr(decoded) == request


@pytest.mark.parametrize(
    ("fields", "payload", "match"),
    [
        ({"delta": "1"}, b"", "key and delta"),
        ({"key": "k"}, b"", "key and delta"),
        ({"key": "k", "delta": "+1"}, b"", "decimal"),
        ({"key": "k", "delta": "01"}, b"", "decimal"),
        ({"key": "k", "delta": "-0"}, b"", "decimal"),
        ({"key": "k", "delta": "1.5"}, b"", "decimal"),
        ({"key": "k", "delta": "9223372036854775808"}, b"", "int64"),
        ({"key": "k", "delta": "1", "consistency": "most"}, b"", "consistency"),
        ({"key": "k", "delta": "1"}, b"x", "payload"),
        ({"key": "%zz", "delta": "1"}, b"", "escape"),
    ],
)
def test_malformed_incr_frames_are_bad_requests(
    fields: dict[str, str], payload: bytes, match: str
) -> None:
    """Every malformed INCR is refused (bad_request, or bad_field for a broken key escape)
    before anything is applied."""
    from twistkv.core.peerwire import parse_incr

    with pytest.raises(PeerProtocolError, match=match) as caught:
        parse_incr(Frame("INCR", 1, fields, payload))
    assert caught.value.code in ("bad_request", "bad_field")


# PUT_BATCH and the features of HELLO (§5.2.1, §8) ------------------------------------------

batch_entries = st.lists(
    st.builds(BatchEntry, st.sampled_from(["PUT", "DEL"]), st.binary(min_size=1, max_size=20),
              st.binary(min_size=1, max_size=40)),
    min_size=1, max_size=60,
)


@given(entries=batch_entries, max_records=st.integers(1, 8), max_bytes=st.integers(1, 300))
def test_put_batch_round_trips_in_order_within_bounds(
    entries: list[BatchEntry], max_records: int, max_bytes: int
) -> None:
    """Entries split into PUT_BATCH frames come back in order through the codec; every frame
    holds at most max_records records and passes max_bytes only when it holds one record."""
    frames = put_batch_frames(entries, max_records, max_bytes)
    decoded: list[BatchEntry] = []
    for frame, count in frames:
        assert 1 <= count <= max_records
        assert count == 1 or len(frame.payload) - 4 <= max_bytes
        (received,) = FrameDecoder().feed(encode_frame(frame, request_id=7))
        assert received.verb == "PUT_BATCH" and received.request_id == 7
        got = parse_put_batch(received)
        assert len(got) == count
        decoded += got
    assert decoded == entries


def test_put_batch_sender_refuses_what_it_must_not_send() -> None:
    """A HINT or an over-long key never goes into a PUT_BATCH: our bug, raised at once."""
    with pytest.raises(InvalidFrameError):
        put_batch_frames([BatchEntry("HINT", b"k", b"r")])
    with pytest.raises(InvalidFrameError):
        put_batch_frames([BatchEntry("PUT", b"k" * (MAX_BATCH_KEY + 1), b"r")])
    assert len(put_batch_frames([BatchEntry("PUT", b"k", b"r")] * (MAX_BATCH_RECORDS + 1))) == 2


def _batch(payload: bytes) -> Frame:
    return Frame("PUT_BATCH", 1, {}, payload)


@pytest.mark.parametrize("payload", [
    b"",                                                    # no count
    b"\x00\x00\x00\x00",                                      # count 0
    (MAX_BATCH_RECORDS + 1).to_bytes(4, "big"),             # count above the bound
    b"\x00\x00\x00\x01\x02\x00\x00\x00\x01k\x00\x00\x00\x01r",      # unknown kind
    b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x01r",        # empty key
    b"\x00\x00\x00\x01\x00\x00\x00\x00\x01k\x00\x00\x00\x00",        # empty record
    b"\x00\x00\x00\x01\x00\x00\x00\x00\x01k\x00\x00\x00\x05r",       # truncated record
    b"\x00\x00\x00\x02\x00\x00\x00\x00\x01k\x00\x00\x00\x01r",       # one entry missing
    b"\x00\x00\x00\x01\x00\x00\x00\x00\x01k\x00\x00\x00\x01rX",      # trailing byte
    b"\x00\x00\x00\x01\x00\xff\xff\xff\xff",                          # key length past the end
])
def test_put_batch_malformed_layout_is_bad_request(payload: bytes) -> None:
    """Every broken PUT_BATCH layout is refused as a whole with bad_request, never a crash."""
    with pytest.raises(PeerProtocolError) as caught:
        parse_put_batch(_batch(payload))
    assert caught.value.code == "bad_request"


@given(payload=st.binary(max_size=80))
def test_put_batch_garbage_is_entries_or_bad_request(payload: bytes) -> None:
    """Arbitrary payloads parse into entries or raise bad_request; nothing else escapes."""
    try:
        entries = parse_put_batch(_batch(payload))
    except PeerProtocolError as error:
        assert error.code == "bad_request"
    else:
        assert 1 <= len(entries) <= MAX_BATCH_RECORDS


@given(outcomes=st.lists(st.one_of(st.none(), st.from_regex(r"[a-z0-9_]{1,64}",
                                                            fullmatch=True)), max_size=40))
def test_batch_outcomes_round_trip_per_record(outcomes: list[str | None]) -> None:
    """The VAL answering a PUT_BATCH carries each record's own outcome, in order."""
    (frame,) = FrameDecoder().feed(encode_frame(batch_outcomes_frame(outcomes), request_id=3))
    assert frame.verb == "VAL"
    assert parse_batch_outcomes(frame, len(outcomes)) == outcomes


def test_batch_outcomes_keep_a_refusal_among_acks() -> None:
    """One refused record among applied ones is reported for that record alone."""
    frame = batch_outcomes_frame([None, "storage_error", None])
    assert parse_batch_outcomes(frame, 3) == [None, "storage_error", None]


@pytest.mark.parametrize("payload, expected", [
    (b"", 0),                                   # no count at all
    (b"\x00\x00\x00\x02\x00\x00", 3),            # fewer outcomes than records
    (b"\x00\x00\x00\x01\x05abc", 1),              # truncated reason
    (b"\x00\x00\x00\x01\x03A B", 1),              # reason outside [a-z0-9_]
    (b"\x00\x00\x00\x01\x00\x00", 1),            # trailing byte
])
def test_batch_outcomes_that_do_not_match_are_bad_request(payload: bytes, expected: int) -> None:
    """An answer that does not hold exactly one valid outcome per record is refused."""
    with pytest.raises(PeerProtocolError) as caught:
        parse_batch_outcomes(Frame("VAL", 1, {}, payload), expected)
    assert caught.value.code == "bad_request"


# GET_BATCH (§5.2.2) --------------------------------------------------------------------------

batch_keys = st.lists(st.binary(min_size=1, max_size=20), min_size=1, max_size=60)


@given(keys=batch_keys, max_records=st.integers(1, 8), max_bytes=st.integers(1, 300))
def test_get_batch_round_trips_in_order_within_bounds(
    keys: list[bytes], max_records: int, max_bytes: int
) -> None:
    """Keys split into GET_BATCH frames come back in order through the codec; every frame
    holds at most max_records keys and passes max_bytes only when it holds one key. Tuples
    that start with the key travel as the key."""
    frames = get_batch_frames([(key, "extra") for key in keys], max_records, max_bytes)
    decoded: list[bytes] = []
    for frame, count in frames:
        assert 1 <= count <= max_records
        assert count == 1 or len(frame.payload) - 4 <= max_bytes
        (received,) = FrameDecoder().feed(encode_frame(frame, request_id=9))
        assert received.verb == "GET_BATCH" and received.request_id == 9
        got = parse_get_batch(received)
        assert len(got) == count
        decoded += got
    assert decoded == keys


def test_get_batch_sender_refuses_keys_it_must_not_send() -> None:
    """An empty or over-long key never goes into a GET_BATCH: our bug, raised at once."""
    for key in (b"", b"k" * (MAX_BATCH_KEY + 1)):
        with pytest.raises(InvalidFrameError):
            get_batch_frames([key])
    assert len(get_batch_frames([b"k"] * (MAX_BATCH_RECORDS + 1))) == 2


@pytest.mark.parametrize("payload", [
    b"",                                              # no count
    b"\x00\x00\x00\x00",                                # count 0
    (MAX_BATCH_RECORDS + 1).to_bytes(4, "big"),       # count above the bound
    b"\x00\x00\x00\x01\x00\x00\x00\x00",                # empty key
    b"\x00\x00\x00\x01\x00\x00\x00\x05k",               # truncated key
    b"\x00\x00\x00\x02\x00\x00\x00\x01k",               # one key missing
    b"\x00\x00\x00\x01\x00\x00\x00\x01kX",              # trailing byte
    b"\x00\x00\x00\x01\x00\x00",                        # truncated length
    b"\x00\x00\x00\x01\x00\x00\x40\x01" + b"k" * 16385,  # key past the 16 KiB limit
])
def test_get_batch_malformed_layout_is_bad_request(payload: bytes) -> None:
    """Every broken GET_BATCH layout is refused as a whole with bad_request, never a crash."""
    with pytest.raises(PeerProtocolError) as caught:
        parse_get_batch(Frame("GET_BATCH", 1, {}, payload))
    assert caught.value.code == "bad_request"


@given(payload=st.binary(max_size=80))
def test_get_batch_garbage_is_keys_or_bad_request(payload: bytes) -> None:
    """Arbitrary payloads parse into keys or raise bad_request; nothing else escapes."""
    try:
        keys = parse_get_batch(Frame("GET_BATCH", 1, {}, payload))
    except PeerProtocolError as error:
        assert error.code == "bad_request"
    else:
        assert 1 <= len(keys) <= MAX_BATCH_RECORDS and all(keys)


@given(records=st.lists(st.one_of(st.none(), st.binary(min_size=1, max_size=50)),
                        min_size=1, max_size=40),
       max_bytes=st.integers(1, 400))
def test_get_batch_answer_round_trips_or_leaves_out_past_the_bound(
    records: list[bytes | None], max_bytes: int
) -> None:
    """The VAL answering a GET_BATCH carries each key's record or None, in order; a record
    that would take the payload past max_bytes is left out (NOT_SENT), except the first
    record, so the payload passes the bound only by that record (and 4 bytes per entry
    after it)."""
    frame = get_batch_answer(records, max_bytes)
    (received,) = FrameDecoder().feed(encode_frame(frame, request_id=4))
    got = parse_get_batch_answer(received, len(records))
    assert len(got) == len(records)
    at = next((i for i, record in enumerate(records) if record is not None), None)
    first = None if at is None else records[at]
    for index, (sent, back) in enumerate(zip(records, got, strict=True)):
        if back is NOT_SENT:
            assert sent is not None and index != at  # the first record always goes
        else:
            assert back == sent
    # Past the bound only by the first record, and 4 bytes per entry (None, NOT_SENT).
    assert len(frame.payload) <= max(max_bytes, 8 + len(first or b"")) + 4 * len(records)


@pytest.mark.parametrize("payload, expected", [
    (b"", 1),                                          # no count at all
    (b"\x00\x00\x00\x02\x00\x00\x00\x00", 2),            # fewer records than keys
    (b"\x00\x00\x00\x01\x00\x00\x00\x05abc", 1),          # truncated record
    (b"\x00\x00\x00\x01\x00\x00\x00\x00\x00", 1),         # trailing byte
    (b"\x00\x00\x00\x02\x00\x00\x00\x00", 1),            # count differs from the keys
])
def test_get_batch_answer_that_does_not_match_is_bad_request(payload: bytes,
                                                              expected: int) -> None:
    """An answer that does not hold exactly one well-formed entry per key is refused."""
    with pytest.raises(PeerProtocolError) as caught:
        parse_get_batch_answer(Frame("VAL", 1, {}, payload), expected)
    assert caught.value.code == "bad_request"


def test_hello_offers_features_and_both_ends_keep_the_common_ones() -> None:
    """Two current nodes both learn that the other accepts PUT_BATCH and GET_BATCH."""
    initiator = Handshake(Role.INITIATOR, config("a", secret=None))
    responder = Handshake(Role.RESPONDER, config("b", secret=None))
    exchanged = run(initiator, responder)
    assert all(frame.fields["features"] == "get_batch,put_batch" for _, frame in exchanged)
    assert isinstance(initiator.outcome, Established)
    assert isinstance(responder.outcome, Established)
    assert initiator.outcome.features == responder.outcome.features == {
        FEATURE_PUT_BATCH, FEATURE_GET_BATCH}


@pytest.mark.parametrize("old", ["initiator", "responder"])
def test_old_peer_without_features_gets_no_batches(old: str) -> None:
    """A node that predates features sends no features field and ignores ours; the handshake
    still succeeds and neither end may use PUT_BATCH on that connection."""
    old_config, new_config = config("a", secret=None, features=frozenset()), config("b",
                                                                                   secret=None)
    if old == "initiator":
        initiator = Handshake(Role.INITIATOR, old_config)
        responder = Handshake(Role.RESPONDER, new_config)
    else:
        initiator = Handshake(Role.INITIATOR, new_config)
        responder = Handshake(Role.RESPONDER, old_config)
    exchanged = run(initiator, responder)
    old_role = Role.INITIATOR if old == "initiator" else Role.RESPONDER
    assert all("features" not in frame.fields for role, frame in exchanged if role is old_role)
    assert isinstance(initiator.outcome, Established)
    assert isinstance(responder.outcome, Established)
    assert initiator.outcome.features == responder.outcome.features == frozenset()


def test_unknown_or_malformed_feature_names_are_ignored() -> None:
    """A newer peer's unknown features, or junk in the field, enable nothing and fail nothing."""
    responder = Handshake(Role.RESPONDER, config("b", secret=None))
    responder.start()
    hello = Frame("HELLO", 0, {"version": "1", "cluster": "prod", "node": "a",
                               "addr": "a.example:7380", "auth": "none",
                               "features": "teleport,,PUT_BATCH,put_batch2"})
    step = responder.receive(wire(hello))
    assert isinstance(step.outcome, Established)
    assert step.outcome.features == frozenset()


def test_feature_names_are_checked_in_config() -> None:
    """A feature name that could not travel in the HELLO field is refused when configured."""
    with pytest.raises(ValueError):
        config("a", features=frozenset({"put batch"}))
