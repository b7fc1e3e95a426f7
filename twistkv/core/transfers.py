"""Range movements, decided without I/O: which nodes own the ring, which movement is under
way, and which node streams which token ranges to which.

A node's *ring status* travels in its own membership metadata (C{ring=<status>}), so every
member learns it by gossip (L{RingStatus}). The ring itself is derived from the statuses by
L{derive_view}:

 - a node **enters** the ring when it is seen NORMAL (or LEAVING, or without a status, as an
   older node would gossip), and **leaves** it only when it is LEFT, by its own announcement
   or by a removal. In between the ring is *sticky*: a member that restarts wiped and says
   WAITING keeps its vnodes (anti-entropy refills it), so a restart never moves ranges;
 - a member that is not in the ring and says JOINING is a *join* under way; a ring member that
   says LEAVING is a *leave*; a live member whose metadata says C{removing=<node>} drives the
   *removal* of that (dead) ring member;
 - the *target ring* is the ring plus joiners, minus leavers and removed nodes. Coordinators
   write to the union of both preference lists (*pending ranges*) and read from the ring.

Who streams what (L{plan_moves}, L{plan_streams}): the token space is cut at every vnode token
of both rings; in each arc, each node that replicates it under the new ring but not under the
old one (the *target*) receives it. Its source is the node that stops replicating the arc
(the *loser*) when that one is alive: the new replica set then holds exactly what the old one
held (the loser's copy moved), so every write acknowledged by W old replicas is on W new
replicas. When the loser is gone (a removal, or a loser that died mid-join), the target
receives the merge of every surviving old replica instead, which keeps the same guarantee.

test-case-name: tests.core.test_transfers
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from twistkv.core.membership import MemberState
from twistkv.core.merkle import normalise_ranges
from twistkv.core.ring import Ring, TokenRange

__all__ = [
    "REMOVING_KEY",
    "STATUS_KEY",
    "ClusterView",
    "MemberView",
    "Move",
    "Movement",
    "RingStatus",
    "Stream",
    "derive_view",
    "movement_target",
    "plan_moves",
    "plan_streams",
    "status_of",
]

#: Metadata key carrying a member's L{RingStatus}.
STATUS_KEY = "ring"
#: Metadata key naming the dead ring member that this member is removing.
REMOVING_KEY = "removing"


class RingStatus(Enum):
    """Where a node stands with respect to the ring (its own word, gossiped in metadata).

    WAITING: started without data, not in the ring, not moving yet. JOINING: streaming its
    future ranges (pending). NORMAL: a ring member. LEAVING: a ring member streaming its ranges
    away. LEFT and REMOVED are local only: a node that left, or learnt that it was removed,
    refuses to serve until its data directory is wiped.
    """

    WAITING = "waiting"
    JOINING = "joining"
    NORMAL = "normal"
    LEAVING = "leaving"
    LEFT = "left"
    REMOVED = "removed"


_GOSSIPED = {s.value: s for s in RingStatus}
_IN_RING = frozenset({RingStatus.NORMAL, RingStatus.LEAVING})
#: Statuses of a node that left or was removed and was restarted without being wiped.
_OUT = frozenset({RingStatus.LEFT, RingStatus.REMOVED})
_ROUTABLE = frozenset({MemberState.ALIVE, MemberState.SUSPECT})


def status_of(metadata: Mapping[str, str]) -> RingStatus | None:
    """The status a member's metadata announces; None when absent or unknown (an older node:
    treated as NORMAL by L{derive_view})."""
    return _GOSSIPED.get(metadata.get(STATUS_KEY, ""))


@dataclass(frozen=True)
class MemberView:
    """What L{derive_view} needs to know of one other member."""

    node_id: str
    state: MemberState
    status: RingStatus | None
    removing: str | None = None


@dataclass(frozen=True, order=True)
class Movement:
    """One range movement under way: C{kind} is C{join}, C{leave} or C{remove}; C{node} the
    node entering or leaving the ring; C{driver} the node that streams (the joiner, the leaver,
    or the node that was asked to remove a dead one). Movements order by node id, which
    decides which of two concurrent movements goes first."""

    node: str
    kind: str
    driver: str

    @property
    def label(self) -> str:
        """C{kind:node}, as peers report it in RB_STATUS."""
        return f"{self.kind}:{self.node}"


@dataclass(frozen=True)
class ClusterView:
    """One node's derived view: the ring, the movements under way, and what it forgets."""

    ring: frozenset[str]
    movements: tuple[Movement, ...] = ()
    #: Nodes known to have left or been removed: not let back in as NORMAL.
    gone: frozenset[str] = frozenset()
    #: Live members waiting to join (not in the ring, not moving yet).
    waiting: frozenset[str] = frozenset()

    @property
    def target(self) -> frozenset[str]:
        """The ring once every movement completes."""
        return movement_target(self.ring, self.movements)

    def conflicts(self, mine: Movement) -> list[Movement]:
        """Movements that go first (they order before C{mine}) and so block it. Movements of
        the node C{mine} is about do not block it: removing a node that died while leaving
        completes its leave."""
        return [m for m in self.movements if m < mine and m.node != mine.node]

    def others(self, mine: Movement) -> list[Movement]:
        """Movements under way besides C{mine} and those about the same node."""
        return [m for m in self.movements if m != mine and m.node != mine.node]


def movement_target(ring: Iterable[str], movements: Iterable[Movement]) -> frozenset[str]:
    """C{ring} with each movement applied: joiners added, leavers and removed nodes dropped."""
    nodes = set(ring)
    for movement in movements:
        if movement.kind == "join":
            nodes.add(movement.node)
        else:
            nodes.discard(movement.node)
    return frozenset(nodes)


def derive_view(
    previous_ring: Iterable[str],
    members: Iterable[MemberView],
    gone: Collection[str],
    self_id: str,
    self_status: RingStatus,
    self_removing: str | None = None,
) -> ClusterView:
    """The ring and the movements, from the previous ring and what membership says now.

    C{members} are the other members SWIM remembers; a ring member it forgot stays in the ring
    (a crashed node keeps its ranges). See the module docstring for the rules.
    """
    ring = set(previous_ring)
    gone_now = set(gone)
    listed = [m for m in members if m.node_id != self_id]
    for member in listed:
        node = member.node_id
        if member.state is MemberState.LEFT or member.status in _OUT:
            ring.discard(node)
            gone_now.add(node)
        elif member.status in (RingStatus.WAITING, RingStatus.JOINING):
            gone_now.discard(node)  # a wiped node coming back as new
        elif node not in gone_now:
            ring.add(node)
    if self_status in _IN_RING:
        ring.add(self_id)
    else:
        ring.discard(self_id)
    movements: set[Movement] = set()
    waiting = frozenset(
        m.node_id for m in listed
        if m.status is RingStatus.WAITING and m.state in _ROUTABLE and m.node_id not in ring
    )
    for member in listed:
        node = member.node_id
        if member.state is MemberState.LEFT:
            continue
        if member.status is RingStatus.JOINING and node not in ring:
            movements.add(Movement(node, "join", node))
        elif member.status is RingStatus.LEAVING and node in ring:
            movements.add(Movement(node, "leave", node))
        if (member.removing and member.state in _ROUTABLE and member.removing in ring
                and member.removing != node):
            movements.add(Movement(member.removing, "remove", node))
    if self_status is RingStatus.JOINING and self_id not in ring:
        movements.add(Movement(self_id, "join", self_id))
    elif self_status is RingStatus.LEAVING:
        movements.add(Movement(self_id, "leave", self_id))
    if self_removing is not None and self_removing in ring:
        movements.add(Movement(self_removing, "remove", self_id))
    return ClusterView(frozenset(ring), tuple(sorted(movements)), frozenset(gone_now), waiting)


# -- planning --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Move:
    """C{target} must receive C{token_range}. C{losers} replicated it under the old ring and
    do not under the new one (the preferred sources); C{others} are the old replicas that keep
    it (sources when no loser is alive)."""

    token_range: TokenRange
    target: str
    losers: tuple[str, ...]
    others: tuple[str, ...]


@dataclass(frozen=True)
class Stream:
    """One copy job: C{source} sends every key it holds in C{ranges} to C{target}."""

    source: str
    target: str
    ranges: tuple[TokenRange, ...] = field(default=())


def plan_moves(old: Ring, new: Ring, n: int) -> list[Move]:
    """Every range a node newly replicates going from C{old} to C{new}, with its sources.

    The ranges per target are exactly those of L{twistkv.core.ring.plan_transfers}; this adds
    which old replicas lose each arc. Adjacent arcs with the same target and sources are
    merged. Arcs without old replicas (the first node) have nothing to copy.
    """
    if n < 0:
        raise ValueError(f"replica count must be non-negative, got {n}")
    boundaries = sorted({t for t, _ in old.vnode_tokens()} | {t for t, _ in new.vnode_tokens()})
    arcs: dict[tuple[str, tuple[str, ...], tuple[str, ...]], list[TokenRange]] = {}
    for index, end in enumerate(boundaries):
        start = boundaries[index - 1]
        before = old.preference_list_for_token(end, n)
        if not before:
            continue
        after = new.preference_list_for_token(end, n)
        gained = [node for node in after if node not in before]
        if not gained:
            continue
        losers = tuple(node for node in before if node not in after)
        others = tuple(node for node in before if node in after)
        for target in gained:
            arcs.setdefault((target, losers, others), []).append(TokenRange(start, end))
    moves = [
        Move(token_range, target, losers, others)
        for (target, losers, others), ranges in arcs.items()
        for token_range in _coalesce(ranges)
    ]
    moves.sort(key=lambda m: (m.target, m.token_range, m.losers, m.others))
    return moves


def plan_streams(
    moves: Iterable[Move], is_alive: Callable[[str], bool], exclude: Collection[str] = ()
) -> tuple[list[Stream], list[Move]]:
    """Group moves into streams, one per (source, target), choosing sources by liveness.

    A move's source is each live loser; when none is alive, every live old replica that keeps
    the range (the target then holds their merge). Nodes in C{exclude} are never sources (a
    node being removed). Returns the streams, sorted, and the moves that have no live source
    (stuck until a source comes back).
    """
    by_pair: dict[tuple[str, str], list[TokenRange]] = {}
    stuck: list[Move] = []
    for move in moves:
        losers = [s for s in move.losers if s not in exclude and s != move.target and is_alive(s)]
        sources = losers or [
            s for s in move.others if s not in exclude and s != move.target and is_alive(s)
        ]
        if not sources:
            stuck.append(move)
            continue
        for source in sources:
            by_pair.setdefault((source, move.target), []).append(move.token_range)
    streams = [
        Stream(source, target, tuple(normalise_ranges(ranges)))
        for (source, target), ranges in sorted(by_pair.items())
    ]
    return streams, stuck


def _coalesce(arcs: list[TokenRange]) -> list[TokenRange]:
    """Merge clockwise-ordered arcs that touch, including across the wrap."""
    merged: list[TokenRange] = []
    for arc in arcs:
        if merged and merged[-1].end == arc.start:
            merged[-1] = TokenRange(merged[-1].start, arc.end)
        else:
            merged.append(arc)
    if len(merged) > 1 and merged[-1].end == merged[0].start:
        last = merged.pop()
        merged[0] = TokenRange(last.start, merged[0].end)
    return merged
