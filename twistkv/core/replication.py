"""Replication rules for one key, sans-IO: merging versions, minting writes, sloppy targets.

Everything a replica or a coordinator decides about *data* lives here as pure functions of
their inputs (and an explicit ``now``), so that hypothesis can check the laws the cluster's
convergence rests on; the Twisted adapters in ``twistkv.node`` only move records and timers.

Versions are ``twistkv.core.record.Version`` (the on-disk and on-wire form: the clock is a
tuple of ``(node, counter)`` pairs). ``twistkv.core.versioning`` reasons about clocks as
``VectorClock``; ``_Clocked`` bridges the two so that ``versioning.reconcile`` stays the one
definition of "which versions survive".

Write clocks: the coordinator's entry is advanced to its HLC timestamp
------------------------------------------------------------------------

A new version's clock is the *context* (every clock the writer had seen) with the coordinating
node's entry raised. Classic vector clocks raise it by one, which makes ``(node, counter)``
identify a write only if the coordinator always sees its own previous writes to the key. Ours
does not always: a coordinator outside a key's preference list holds no copy, a stale replica
may coordinate, and tombstone collection forgets history. Two different writes with EQUAL
clocks would then be deduplicated into one on every replica: a silently lost acknowledged write
(or replicas that disagree forever, since read repair compares clocks).

So `new_version` sets the coordinator's entry to ``max(context[node] + 1, hlc_ts)``. The HLC is
strictly increasing per node (and reseeded from stored data across restarts), so every write a
node coordinates gets a counter no other write of that node ever had, for any key. The order
laws are unchanged (the entry still only grows along a causal chain); the counters are just
large, sparse numbers (about ``wall_ms << 16``), which ``VERSIONS`` shows as is.

Context of a plain ``SET``: the caller passes what the client last read (``ReadResult.context``)
or, for a blind ``SET``, the clocks of what the coordinator holds locally (see
``twistkv.node.coordinator``). Consequence: two blind ``SET``s coordinated concurrently by two
nodes (or by one node that holds a stale or no copy) produce siblings; plain ``GET`` answers the
last-writer (HLC) winner among them, and the next write whose context covers every sibling (any
write coordinated by a replica that has seen them, or one carrying a read's context) resolves
them.

Counters: concurrent versions are siblings in storage, one value when read
-----------------------------------------------------------------------------

A version may be a PN-counter (``Version.counter``, see ``twistkv.core.counter``). Storage
treats counter versions like any other: `merge_versions` keeps exactly the versions no other
supersedes, so concurrent increments by different actors are kept side by side, as siblings,
by every path where versions meet (replica writes, read reconcile and repair, hints,
anti-entropy, range streaming). Reading joins them: ``record.live_value`` returns, for a
counter winner, the PN-counter join of every surviving counter of its *lineage* (same base,
origin and expiry), so GET counts every concurrent increment. The next increment
(`increment_version`) starts from that join and supersedes all of them, collapsing the
siblings into one version.

Why not join counters inside the merge itself: the join is lossy. A ``SET`` that saw one
counter version (and so reset its increments) but not a concurrent one must drop the first
and keep the second; once a replica had joined the two, neither could be told apart, and the
result of a merge would depend on the order versions arrived in (we found exactly this with
the history-based property test in ``tests/core/test_replication.py``). Keeping siblings
until an actor supersedes them keeps the merge a pure function of the set of versions
(commutative, associative, idempotent), and a reset drops exactly the increments it saw.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from twistkv.core.counter import INT64_MAX, INT64_MIN, CounterOverflow, PNCounter, parse_int64
from twistkv.core.quorum import ConsistencyLevel, Replica
from twistkv.core.record import Record, Version, live_value, single_writer_layout
from twistkv.core.versioning import VectorClock, hlc_physical_ms, reconcile, stale

__all__ = [
    "encode_sole_writer",
    "encode_sole_writer_run",
    "sole_writer_clock",
    "sole_writer_clocks",
    "supersedes_sole_writer",
    "supersedes_sole_writer_run",
    "sole_writer_value",
    "collectable",
    "context_clock",
    "increment_version",
    "merge_versions",
    "new_version",
    "next_stand_in",
    "plan_write_targets",
    "reconcile_versions",
    "replica_is_stale",
    "required_replies",
    "version_clock",
]


def version_clock(version: Version) -> VectorClock:
    """The vector clock of a stored version (its pairs validated and normalised)."""
    pairs = version.clock
    counters = _canonical_counters(pairs)
    if counters is None:
        return VectorClock.from_pairs(pairs)
    return VectorClock._from_canonical(pairs, counters)


@dataclass(frozen=True, slots=True)
class _Clocked:
    """A record version seen through the ``versioning.Version`` protocol."""

    clock: VectorClock
    hlc: int
    node: str
    version: Version


def _identity(version: Version) -> tuple[object, ...]:
    """A total order on versions, so that a choice among EQUAL clocks never depends on input
    order (which would make merging non-commutative)."""
    counter = version.counter
    return (
        version.hlc,
        version.node,
        tuple(sorted(version.clock)),
        version.tombstone,
        version.expires_at_ms,
        version.value,
        () if counter is None else tuple(counter),
    )


def reconcile_versions(versions: Iterable[Version]) -> list[Version]:
    """The sibling set of ``versions``: those no other version's clock supersedes.

    Of versions with EQUAL clocks one is kept. With `new_version`'s clocks equal clocks mean the
    same write, so any copy will do; should two differ anyway (a corrupt peer, a bug), the greatest
    under a total order is kept, so every replica makes the same choice. The result is newest first
    (``versioning.reconcile``'s order), so element 0 is the last-writer winner a plain GET returns.
    Also the ``reconcile`` callable of ``quorum.ReadCoordination``.
    """
    versions = list(versions)
    if versions:
        # Usual case: every replica holds the same single write (one clock, canonical form):
        # all EQUAL, so the survivor is the greatest under the identity order, exactly what
        # the general path below picks.
        first = versions[0].clock
        if all(v.clock == first for v in versions) and _canonical_counters(first) is not None:
            return [max(versions, key=_identity)] if len(versions) > 1 else versions
    # Pre-sorting by the full identity, descending, makes reconcile's stable sort keep the
    # greatest of any tie it cannot break itself.
    ordered = sorted(versions, key=_identity, reverse=True)
    kept = reconcile(_Clocked(version_clock(v), v.hlc, v.node, v) for v in ordered)
    return [clocked.version for clocked in kept]


# -- counters (PN-counter CRDT; see twistkv.core.counter) --------------------------------------


def increment_version(
    record: Record | None,
    actor: str,
    delta: int,
    node_id: str,
    hlc_ts: int,
    now_ms: int,
) -> Version:
    """The counter version an actor stores after adding C{delta} to what it holds locally.

    The caller (the actor replica, or a lone node) reads its own record, calls this and
    stores the result in one reactor turn, so the read-modify-write of its own entry is
    atomic. The new version descends every version in C{record} (like any write with the full
    local context) and continues the counter a plain GET sees:

     - the live winner is a counter: its lineage continues, joined with every concurrent
       counter of that lineage the record holds (L{live_value}), and C{delta} goes to
       C{actor}'s entry; the new version supersedes them all, so they collapse into one;
     - the live winner is a plain value: it must be a decimal int64 (else L{NotAnInteger});
       a new lineage starts with it as the base, named after that version;
     - no live value (absent, deleted, expired): a new lineage starts at 0, named after the
       winner that hid it (a tombstone, an expired value) or C{(0, "")} when there is none,
       so that increments two actors start on the same missing key merge.

    The expiry of the live value is kept (Redis keeps a key's TTL across INCR).

    @raise NotAnInteger: the live value is not an integer.
    @raise CounterOverflow: the new value would leave int64 (nothing is stored).
    """
    versions = record.versions if record is not None else ()
    live = live_value(record, now_ms) if versions else None
    if live is not None and live.counter is not None:
        current = live.counter  # already the join of the winner's lineage (live_value)
        expires = live.expires_at_ms
    elif live is not None:
        current = PNCounter(parse_int64(live.value), live.hlc, live.node)
        expires = live.expires_at_ms
    else:
        winner = record.winner() if record is not None else None
        current = PNCounter(0, winner.hlc, winner.node) if winner is not None else PNCounter()
        expires = 0
    counter = current.add(actor, delta)
    value = counter.value()
    if not INT64_MIN <= value <= INT64_MAX:
        raise CounterOverflow()
    plain = new_version(context_clock(versions), b"", node_id, hlc_ts, expires)
    return plain._replace(value=str(value).encode("ascii"), counter=counter)


def merge_versions(stored: Record | None, incoming: Iterable[Version]) -> Record:
    """What a replica stores after receiving ``incoming`` for a key it holds as ``stored``.

    Exactly the versions no other version (stored or incoming) supersedes survive, one per clock.
    This is commutative, associative and idempotent over sets of versions, so replicas that
    receive the same writes in any order, any number of times, converge to the same record.
    """
    current = stored.versions if stored is not None else ()
    if len(current) <= 1:
        incoming = tuple(incoming)
        if len(incoming) == 1:
            fast = _merge_one(current[0] if current else None, incoming[0])
            if fast is not None:
                return fast
        return Record(tuple(reconcile_versions((*current, *incoming))))
    return Record(tuple(reconcile_versions((*current, *incoming))))


def _canonical_counters(clock: object) -> dict[str, int] | None:
    """``clock`` as a dict if it is already in `VectorClock.pairs` form (a tuple of
    ``(str, positive int)`` pairs, strictly sorted by node), else None."""
    if type(clock) is not tuple:
        return None
    counters: dict[str, int] = {}
    previous = None
    for pair in clock:
        if type(pair) is not tuple or len(pair) != 2:
            return None
        node_id, counter = pair
        if type(node_id) is not str or type(counter) is not int or counter <= 0:
            return None
        if previous is not None and node_id <= previous:
            return None
        previous = node_id
        counters[node_id] = counter
    return counters


def _merge_one(stored: Version | None, incoming: Version) -> Record | None:
    """`merge_versions` of at most one stored and exactly one incoming version, when one
    supersedes the other (the usual replica write); None when the full path must decide
    (concurrent or equal clocks, or a clock not in canonical form)."""
    theirs = _canonical_counters(incoming.clock)
    if theirs is None:
        return None
    if stored is None:
        return Record((incoming,))
    mine = _canonical_counters(stored.clock)
    if mine is None:
        return None
    ahead = any(counter > mine.get(node_id, 0) for node_id, counter in theirs.items())
    behind = any(counter > theirs.get(node_id, 0) for node_id, counter in mine.items())
    if ahead and not behind:
        return Record((incoming,))
    if behind and not ahead:
        return Record((stored,))
    return None


def replica_is_stale(reply: Sequence[Version], reconciled: Sequence[Version]) -> bool:
    """Whether read repair should send ``reconciled`` to the replica that answered ``reply``.

    The ``is_stale`` callable of ``quorum.ReadCoordination``: versions are compared by clock,
    since equal clocks are the same write.
    """
    return stale(
        [_Clocked(version_clock(v), v.hlc, v.node, v) for v in reply],
        [_Clocked(version_clock(v), v.hlc, v.node, v) for v in reconciled],
    )


def context_clock(versions: Iterable[Version]) -> VectorClock:
    """The merge of the versions' clocks: a write with this context supersedes all of them."""
    versions = tuple(versions)
    if len(versions) == 1:
        return version_clock(versions[0])
    clock = VectorClock()
    for version in versions:
        clock = clock.merge(version_clock(version))
    return clock


def new_version(
    context_clock: VectorClock,
    value: bytes,
    node_id: str,
    hlc_ts: int,
    expires_at_ms: int = 0,
    tombstone: bool = False,
) -> Version:
    """The version a coordinator writes: it descends ``context_clock`` and nothing else.

    ``node_id``'s entry becomes ``max(context + 1, hlc_ts)`` (see the module docstring for why
    not just ``+ 1``); pass a fresh ``HybridLogicalClock.tick`` as ``hlc_ts``. A tombstone's value
    is ignored and stored empty.
    """
    if tombstone:
        value, expires_at_ms = b"", 0
    counter = max(context_clock.counter(node_id) + 1, hlc_ts)
    counters = dict(context_clock.pairs)
    counters[node_id] = counter
    if type(counter) is int and type(node_id) is str:
        # context pairs are valid and counter >= 1: only the order needs restoring
        clock = tuple(sorted(counters.items()))
    else:
        clock = VectorClock.from_pairs(counters.items()).pairs
    return Version(value, clock, hlc_ts, node_id, expires_at_ms, tombstone)


def _died_at_ms(version: Version, now_ms: int) -> int | None:
    """When a version stopped being a value (deleted or expired), or None if it is live."""
    if version.tombstone:
        return hlc_physical_ms(version.hlc)
    if version.expired(now_ms):
        return version.expires_at_ms
    return None


def collectable(record: Record, now_ms: int, grace_ms: int) -> bool:
    """Whether a replica may physically remove ``record``: tombstone garbage collection.

    True when every version is a tombstone or expired, and each died at least ``grace_ms`` ago
    (a tombstone dies at its HLC's wall time, an expired value at its expiry).

    Why the whole record and not single siblings: a dead sibling may be the last-writer winner
    that hides a live concurrent one; dropping it alone would resurrect the older value.

    Why the grace period: until every replica has the tombstone, a replica that missed the
    delete still holds the old value, and read repair or hinted handoff would copy it back to
    the replicas that already forgot the tombstone: the delete would be undone. The grace must
    therefore exceed the longest time a write can take to reach every replica: the hint age
    cap, and the longest outage after which a node may rejoin without being wiped.
    """
    if not record.versions:
        return True
    for version in record.versions:
        died = _died_at_ms(version, now_ms)
        if died is None or now_ms - died < grace_ms:
            return False
    return True


def required_replies(level: ConsistencyLevel | None, replicas: int, default: int) -> int:
    """How many of ``replicas`` (the size of the key's preference list) must answer.

    ``level`` None means the cluster default (R or W). A cluster with fewer nodes than N
    replicates to every node, and the requirement is capped at what exists: ONE/QUORUM/ALL are
    computed over the replicas that exist, and a default above that is capped. So a one-node
    development cluster answers, while a cluster of N or more nodes keeps the configured quorums.
    """
    if replicas < 1:
        raise ValueError("a key needs at least one replica")
    if level is None:
        return max(1, min(default, replicas))
    return level.required(replicas)


def plan_write_targets(
    preference: Sequence[str], fallbacks: Sequence[str], is_alive: Callable[[str], bool]
) -> list[Replica]:
    """Sloppy-quorum targets for a write: one per owner in ``preference``, in order.

    A live owner is its own target. An owner believed down is replaced by the first live
    fallback not already used (``Replica(fallback, hinted_for=owner)``), as in Dynamo. With no
    live fallback left (a cluster of exactly N nodes has none), the slot stays on the owner: it
    is still tried, in case the failure detector is wrong, and the coordinator keeps a hint for
    it if the attempt fails.
    """
    used = set(preference)
    targets: list[Replica] = []
    for owner in preference:
        if is_alive(owner):
            targets.append(Replica(owner))
            continue
        stand_in = next_stand_in(owner, fallbacks, used, is_alive)
        if stand_in is None:
            targets.append(Replica(owner))
        else:
            used.add(stand_in)
            targets.append(Replica(stand_in, hinted_for=owner))
    return targets


def next_stand_in(
    owner: str, fallbacks: Sequence[str], used: Iterable[str], is_alive: Callable[[str], bool]
) -> str | None:
    """The next live fallback, nearest on the ring first, not yet used by this write."""
    taken = set(used)
    for candidate in fallbacks:
        if candidate != owner and candidate not in taken and is_alive(candidate):
            return candidate
    return None


# -- records of one writer, without decoding ---------------------------------------------------
#
# Under load almost every record is one version written by one node and clocked by it alone
# (every blind SET coordinated by the same node). Such a record can be recognised, minted and
# compared on its bytes (the layout of twistkv.core.record): the coordinator and the replicas
# then skip decode, merge and encode on the write path. Anything else takes the general path.

_BLOCK_AT = 20  # where the writer's str8 starts
#: Writer name length -> the struct of a sole writer's record up to its value: the head, the
#: writer block (name, then the clock's one entry: count 1 and the same name) and the tail.
#: One C{unpack_from} then reads all the fields the checks below need.
_SOLE_LAYOUTS: dict[int, struct.Struct] = {}


def _sole_layout(name_length: int) -> struct.Struct:
    layout = _SOLE_LAYOUTS.get(name_length)
    if layout is None:  # the writer block: two str8 names and a u16 count
        layout = _SOLE_LAYOUTS[name_length] = single_writer_layout(2 * name_length + 4)
    return layout


def sole_writer_clock(raw: bytes, block: bytes) -> tuple[int, int] | None:
    """C{(hlc, counter)} when C{raw} is a well-formed record of exactly one plain or tombstone
    version written by the node of C{block} (L{twistkv.core.record.single_writer_block}) and
    clocked by that node alone; None otherwise (counters included: they take the general path).
    The writer's name is not checked for UTF-8: C{block} comes from a trusted source."""
    name_length = (len(block) - 4) // 2
    layout = _SOLE_LAYOUTS.get(name_length) or _sole_layout(name_length)
    if len(raw) < layout.size:
        return None
    version, count, flags, hlc, _, writer, counter, size = layout.unpack_from(raw)
    if (version != 1 or count != 1 or flags > 1 or writer != block or counter < 1
            or layout.size + size != len(raw)):
        return None
    return hlc, counter


def sole_writer_clocks(raws: Sequence[bytes | None], block: bytes
                       ) -> list[tuple[int, int] | None]:
    """L{sole_writer_clock} of each record of C{raws} (None for an absent one, None too where
    it would answer None), in one loop: a coordinator reads a run's records together."""
    name_length = (len(block) - 4) // 2
    layout = _SOLE_LAYOUTS.get(name_length) or _sole_layout(name_length)
    unpack, size = layout.unpack_from, layout.size
    clocks: list[tuple[int, int] | None] = []
    append = clocks.append
    for raw in raws:
        if raw is None or len(raw) < size:
            append(None)
            continue
        version, count, flags, hlc, _, writer, counter, length = unpack(raw)
        append((hlc, counter) if (version == 1 and count == 1 and flags <= 1
                                  and writer == block and counter >= 1
                                  and size + length == len(raw)) else None)
    return clocks


def encode_sole_writer_run(
    block: bytes, values: Sequence[bytes], first_hlc: int, raws: Sequence[bytes | None],
    clocks: Sequence[tuple[int, int] | None],
) -> list[tuple[bytes, bytes | None] | None]:
    """The records of a run of blind writes by the node of C{block}, value C{i} stamped
    C{first_hlc + i} without expiry, over the stored records C{raws} and their
    L{sole_writer_clocks}: per write C{(record, raw)}, or None where C{raw} is another
    writer's (the general path merges those).

    Each record's clock entry is its HLC timestamp, or one past the stored counter where
    that is not below it, so the new version descends the one it replaces. One loop and
    one C{pack} per record: L{encode_sole_writer} for a run.
    """
    name_length = (len(block) - 4) // 2
    pack = (_SOLE_LAYOUTS.get(name_length) or _sole_layout(name_length)).pack
    minted: list[tuple[bytes, bytes | None] | None] = []
    append = minted.append
    ts = first_hlc
    for value, raw, clock in zip(values, raws, clocks, strict=True):
        if clock is None:
            if raw is not None:
                append(None)
                ts += 1
                continue
            counter = ts
        else:
            counter = clock[1]
            counter = ts if counter < ts else counter + 1
        append((pack(1, 1, 0, ts, 0, block, counter, len(value)) + value, raw))
        ts += 1
    return minted


def _sole_fields(raw: bytes) -> tuple[bytes, tuple[Any, ...], struct.Struct] | None:
    """When C{raw} has the layout of one plain or tombstone version clocked by its writer
    alone (any writer): the writer's str8, the fixed fields and their layout
    (L{_sole_layout}; its size is where the value starts); None otherwise. The writer's
    name is not checked for UTF-8 here."""
    if len(raw) <= _BLOCK_AT:
        return None
    name_length = raw[_BLOCK_AT]
    layout = _SOLE_LAYOUTS.get(name_length) or _sole_layout(name_length)
    if len(raw) < layout.size:
        return None
    fields = layout.unpack_from(raw)
    version, count, flags, _, _, block, counter, size = fields
    if (version != 1 or count != 1 or flags > 1 or counter < 1
            or layout.size + size != len(raw)):
        return None
    name = block[:name_length + 1]  # the str8, length byte included
    if block[name_length + 1:] != b"\x00\x01" + name:
        return None
    return name, fields, layout


def supersedes_sole_writer(stored: bytes | None, incoming: bytes) -> bool:
    """Whether C{merge_versions} of the record C{incoming} into C{stored} is exactly
    C{incoming}, and its bytes are what C{encode_record} would store, decided on the bytes.

    True only when C{incoming} is one well-formed plain or tombstone version clocked by its
    writer alone (a valid UTF-8 name, a positive counter), and C{stored} is absent or a record
    of that same sole writer with a smaller counter. False means "decode and merge": it never
    says the record is bad.
    """
    sole = _sole_fields(incoming)
    if sole is None:
        return False
    name, (_, _, _, _, _, block, counter, _), layout = sole
    if stored is None:
        try:
            name[1:].decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True
    if len(stored) < layout.size:
        return False
    version, count, flags, _, _, writer, ours, size = layout.unpack_from(stored)
    return (version == 1 and count == 1 and flags <= 1 and writer == block and ours >= 1
            and layout.size + size == len(stored) and counter > ours)


def supersedes_sole_writer_run(
    stored: Sequence[bytes | None], incoming: Sequence[bytes]
) -> list[bool]:
    """L{supersedes_sole_writer} of each pair of C{stored} and C{incoming}, in one loop: a
    replica checks a C{PUT_BATCH}'s records together. A batch's records nearly all come from
    one writer, so the checks of the writer block alone (its two names agree, the name is
    UTF-8) are made once per distinct block."""
    verdicts: list[bool] = []
    append = verdicts.append
    #: Writer block -> (well formed, its name is UTF-8).
    blocks: dict[bytes, tuple[bool, bool]] = {}
    last_length = -1
    layout = unpack = None
    size = 0
    for old, raw in zip(stored, incoming, strict=True):
        if len(raw) <= _BLOCK_AT:
            append(False)
            continue
        name_length = raw[_BLOCK_AT]
        if name_length != last_length:
            last_length = name_length
            layout = _SOLE_LAYOUTS.get(name_length) or _sole_layout(name_length)
            unpack, size = layout.unpack_from, layout.size
        assert unpack is not None
        if len(raw) < size:
            append(False)
            continue
        version, count, flags, _, _, block, counter, length = unpack(raw)
        if (version != 1 or count != 1 or flags > 1 or counter < 1
                or size + length != len(raw)):
            append(False)
            continue
        known = blocks.get(block)
        if known is None:
            name = block[:name_length + 1]  # the str8, length byte included
            try:
                name[1:].decode("utf-8")
            except UnicodeDecodeError:
                utf8 = False
            else:
                utf8 = True
            known = blocks[block] = (block[name_length + 1:] == b"\x00\x01" + name, utf8)
        if not known[0]:
            append(False)
        elif old is None:
            append(known[1])
        elif len(old) < size:
            append(False)
        else:
            version, count, flags, _, _, writer, ours, length = unpack(old)
            append(version == 1 and count == 1 and flags <= 1 and writer == block
                   and ours >= 1 and size + length == len(old) and counter > ours)
    return verdicts


def sole_writer_value(raw: bytes) -> tuple[bytes, int, bool] | None:
    """C{(value, expires_at_ms, tombstone)} of C{raw} when it is a well-formed record of one
    plain or tombstone version clocked by its writer alone (any writer: the usual record of
    a cluster, every blind SET's); None means "decode it" (counters, siblings, damage).

    What a read needs from such a record, without building a L{Version}: the same answer
    L{twistkv.core.record.live_value} gives on its decoded form.
    """
    sole = _sole_fields(raw)
    if sole is None:
        return None
    name, (_, _, flags, _, expires, _, _, _), layout = sole
    try:
        name[1:].decode("utf-8")  # decode_record would refuse the record otherwise
    except UnicodeDecodeError:
        return None
    return raw[layout.size:], expires, flags == 1


def encode_sole_writer(
    block: bytes, value: bytes, hlc: int, expires_at_ms: int, counter: int, tombstone: bool
) -> bytes:
    """C{encode_record} of the one version C{Version(value, ((node, counter),), hlc, node,
    expires_at_ms, tombstone)}, node being the writer of C{block}."""
    name_length = (len(block) - 4) // 2
    layout = _SOLE_LAYOUTS.get(name_length) or _sole_layout(name_length)
    # One pack for everything before the value (the layout by name length, cached).
    return layout.pack(1, 1, 1 if tombstone else 0, hlc, expires_at_ms, block, counter,
                       len(value)) + value
