"""Tests for twistkv.core.counter: the PN-counter state, its laws and its encoding."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twistkv.core.counter import (
    CounterFormatError,
    NotAnInteger,
    PNCounter,
    decode_counter,
    encode_counter,
    parse_int64,
)

ACTORS = ("a/1", "b/1", "c/1", "a/2")
LINEAGE = (10, 5, "n1")


def _state(entries: dict[str, tuple[int, int]], lineage: tuple[int, int, str] = LINEAGE
           ) -> PNCounter:
    return PNCounter(*lineage, tuple(sorted((a, p, n) for a, (p, n) in entries.items()
                                            if p or n)))


#: States of one lineage over few actors and small totals, so that entries overlap often.
states = st.dictionaries(
    st.sampled_from(ACTORS), st.tuples(st.integers(0, 6), st.integers(0, 6)), max_size=4
).map(_state)
#: Any canonical state, for the codec.
any_states = st.builds(
    lambda base, hlc, node, entries: _state(entries, (base, hlc, node)),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(0, 2**64 - 1),
    st.text(max_size=12),
    st.dictionaries(st.text(max_size=300), st.tuples(st.integers(0, 2**80),
                                                      st.integers(0, 2**80)), max_size=4),
)


@given(states, states)
def test_join_is_commutative(a: PNCounter, b: PNCounter) -> None:
    """Replicas merging the same two states in either order hold the same state."""
    assert a.join(b) == b.join(a)


@given(states, states, states)
def test_join_is_associative(a: PNCounter, b: PNCounter, c: PNCounter) -> None:
    """Merging in any grouping gives the same state (replicas batch differently)."""
    assert a.join(b).join(c) == a.join(b.join(c))


@given(states)
def test_join_is_idempotent(a: PNCounter) -> None:
    """Receiving a state again changes nothing (duplicates, retries, repairs)."""
    assert a.join(a) == a


@given(states, states)
def test_join_is_an_upper_bound(a: PNCounter, b: PNCounter) -> None:
    """The join includes each input: every entry is at least as large as in either state."""
    joined = a.join(b)
    for actor in ACTORS:
        p, n = joined.entry(actor)
        for state in (a, b):
            sp, sn = state.entry(actor)
            assert p >= sp and n >= sn


@given(states, st.sampled_from(ACTORS), st.integers(1, 50))
def test_value_is_monotone_in_p_and_antitone_in_n(state: PNCounter, actor: str, k: int) -> None:
    """Adding to an actor's P raises the value by exactly that much, adding to N lowers it:
    the value counts each increment once, whatever the other entries hold."""
    assert state.add(actor, k).value() == state.value() + k
    assert state.add(actor, -k).value() == state.value() - k
    p, n = state.entry(actor)
    assert state.add(actor, k).entry(actor) == (p + k, n)
    assert state.add(actor, -k).entry(actor) == (p, n + k)


@given(st.lists(st.tuples(st.sampled_from(ACTORS), st.integers(-20, 20)), max_size=30),
       st.randoms(use_true_random=False))
def test_concurrent_increments_merge_to_their_sum(
    ops: list[tuple[str, int]], rnd: object
) -> None:
    """Each actor applies its own increments to its own copy; merging every copy, in any
    order, gives base + the sum of all increments: none is lost, none counted twice."""
    copies = {actor: PNCounter(*LINEAGE) for actor in ACTORS}
    for actor, delta in ops:
        copies[actor] = copies[actor].add(actor, delta)
    order = list(copies.values())
    rnd.shuffle(order)  # type: ignore[attr-defined]
    merged = order[0]
    for state in order[1:] + order[:2]:
        merged = merged.join(state)
    assert merged.value() == LINEAGE[0] + sum(delta for _, delta in ops)


def test_states_of_different_lineages_do_not_join() -> None:
    """A counter started from another base (a SET in between) is never merged pointwise:
    that would mix increments a reset discarded into the new count."""
    with pytest.raises(ValueError, match="lineage"):
        PNCounter(10, 5, "n1").join(PNCounter(20, 6, "n1"))


def test_add_keeps_the_state_canonical() -> None:
    """Entries stay sorted by actor, an increment and decrement that cancel leave (P, N)
    non-zero (both are totals), and a zero delta on a new actor adds no entry."""
    state = PNCounter().add("b", 2).add("a", 1).add("b", -2).add("c", 0)
    assert state.entries == (("a", 1, 0), ("b", 2, 2))
    assert state.value() == 1


@settings(max_examples=200)
@given(any_states)
def test_codec_round_trip(state: PNCounter) -> None:
    """Any canonical state decodes back to exactly itself."""
    assert decode_counter(encode_counter(state)) == state


@settings(max_examples=200)
@given(any_states, st.data())
def test_truncation_is_detected(state: PNCounter, data: st.DataObject) -> None:
    """Every strict prefix of an encoding is refused with CounterFormatError."""
    raw = encode_counter(state)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(CounterFormatError):
        decode_counter(raw[:cut])


@settings(max_examples=300)
@given(st.binary(max_size=120))
def test_garbage_raises_only_counter_format_error(raw: bytes) -> None:
    """Random bytes decode to a state that re-encodes identically, or raise
    CounterFormatError, never anything else: the decoder accepts canonical forms only."""
    try:
        state = decode_counter(raw)
    except CounterFormatError:
        return
    assert encode_counter(state) == raw


def test_non_canonical_encodings_are_refused() -> None:
    """Unsorted or repeated actors and all-zero entries are refused, so that equal states
    always have equal bytes (anti-entropy digests compare bytes)."""
    good = encode_counter(PNCounter(0, 0, "", (("a", 1, 0), ("b", 1, 0))))
    swapped = good.replace(b"\x00\x01a", b"\x00\x01c")
    with pytest.raises(CounterFormatError, match="sorted"):
        decode_counter(swapped)
    zero = encode_counter(PNCounter(0, 0, "", (("a", 1, 0),)))[:-3] + b"\x00\x00"
    with pytest.raises(CounterFormatError, match="zero"):
        decode_counter(zero)


@pytest.mark.parametrize(
    ("text", "expected"),
    [(b"0", 0), (b"-1", -1), (b"9223372036854775807", 2**63 - 1),
     (b"-9223372036854775808", -(2**63))],
)
def test_parse_int64_accepts_what_redis_incr_accepts(text: bytes, expected: int) -> None:
    """Canonical decimals within int64 are integers to INCR."""
    assert parse_int64(text) == expected


@pytest.mark.parametrize(
    "text", [b"", b" 1", b"1 ", b"+1", b"01", b"-0", b"1.5", b"abc", b"9223372036854775808",
             b"-9223372036854775809", b"-", "١".encode()],
)
def test_parse_int64_refuses_what_redis_incr_refuses(text: bytes) -> None:
    """Anything else is 'not an integer or out of range', as Redis answers."""
    with pytest.raises(NotAnInteger, match="not an integer"):
        parse_int64(text)
