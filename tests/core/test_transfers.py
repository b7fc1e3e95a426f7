"""Tests for twistkv.core.transfers: the derived ring and movements, and range planning.

The planning properties are the issue's: after a plan runs, every member of every token's new
preference list holds the token's data; movement is minimal (a node only receives ranges it
newly replicates, and only once when the loser is alive); and every write that was on W old
replicas is on W new replicas, both when the losing replica streams its copy and when it is
dead and the survivors' merge is streamed instead.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twistkv.core.membership import (
    Action,
    Gossip,
    MemberEvent,
    Membership,
    MembershipConfig,
    MemberState,
    MemberUpdate,
    Send,
)
from twistkv.core.merkle import RangeSet, intersect_ranges, normalise_ranges, ranges_width
from twistkv.core.ring import TOKEN_SPACE, Ring, plan_transfers
from twistkv.core.transfers import (
    ClusterView,
    MemberView,
    Movement,
    RingStatus,
    derive_view,
    movement_target,
    plan_moves,
    plan_streams,
    status_of,
)

node_ids = st.sampled_from([f"n{i}" for i in range(1, 9)])
clusters = st.sets(node_ids, min_size=1, max_size=7)
small_vnodes = st.integers(min_value=1, max_value=8)


def sample_tokens(rng: random.Random, *rings: Ring, count: int = 150) -> list[int]:
    """Random tokens plus each vnode token and its neighbours (where mistakes hide)."""
    tokens = {rng.randrange(TOKEN_SPACE) for _ in range(count)} | {0, TOKEN_SPACE - 1}
    for ring in rings:
        for token, _ in ring.vnode_tokens():
            tokens |= {token, (token + 1) % TOKEN_SPACE}
    return sorted(tokens)


def run_plan(old: Ring, new: Ring, n: int, alive: set[str], tokens: list[int],
             holders: dict[int, set[str]]) -> dict[int, set[str]]:
    """Execute the streams of the plan on token -> nodes holding its data (merging)."""
    streams, stuck = plan_streams(plan_moves(old, new, n), lambda node: node in alive)
    assert not stuck
    after = {token: set(nodes) for token, nodes in holders.items()}
    for stream in streams:
        inside = RangeSet(stream.ranges)
        for token in tokens:
            if token in inside and stream.source in holders[token]:
                after[token].add(stream.target)
    return after


@settings(max_examples=80, deadline=None)
@given(clusters, clusters, st.integers(1, 4), small_vnodes)
def test_moves_cover_exactly_what_plan_transfers_plans(
    before: set[str], after: set[str], n: int, vnodes: int
) -> None:
    """Per target, the moves cover exactly the ranges of ring.plan_transfers, and each move
    names as losers the old replicas that stop replicating it."""
    old, new = Ring(before, vnodes), Ring(after, vnodes)
    moves = plan_moves(old, new, n)
    transfers = plan_transfers(old, new, n)
    for target in before | after:
        mine = [m.token_range for m in moves if m.target == target]
        planned = [t.token_range for t in transfers if t.target == target]
        assert normalise_ranges(mine) == normalise_ranges(planned)
    for move in moves:
        token = move.token_range.end
        old_list, new_list = old.preference_list_for_token(token, n), new.preference_list_for_token(
            token, n)
        assert move.target in new_list and move.target not in old_list
        assert set(move.losers) == set(old_list) - set(new_list)
        assert set(move.others) == set(old_list) & set(new_list)


@settings(max_examples=80, deadline=None)
@given(clusters, node_ids, st.integers(1, 4), small_vnodes, st.sampled_from(["join", "leave"]),
       st.randoms(use_true_random=False))
def test_after_a_join_or_leave_every_new_owner_holds_the_data_and_movement_is_minimal(
    nodes: set[str], changed: str, n: int, vnodes: int, kind: str, rng: random.Random
) -> None:
    """Every token's new preference list holds its data; a node only receives ranges it newly
    replicates, from exactly one source (the loser) once the ring has at least N nodes."""
    if kind == "join":
        nodes = nodes - {changed}
        old = Ring(nodes, vnodes)
        new = old.with_node(changed)
    else:
        nodes = nodes | {changed}
        old = Ring(nodes, vnodes)
        new = old.without_node(changed)
    if not old.nodes or not new.nodes:
        return
    tokens = sample_tokens(rng, old, new)
    holders = {t: set(old.preference_list_for_token(t, n)) for t in tokens}
    alive = set(old.nodes) | set(new.nodes)
    result = run_plan(old, new, n, alive, tokens, holders)
    for token in tokens:
        assert set(new.preference_list_for_token(token, n)) <= result[token]
    streams, _ = plan_streams(plan_moves(old, new, n), lambda node: node in alive)
    for stream in streams:
        gained = intersect_ranges(new.owned_ranges(stream.target, n),
                                  stream.ranges)
        assert ranges_width(gained) == ranges_width(stream.ranges)  # newly replicated...
        kept = intersect_ranges(old.owned_ranges(stream.target, n), stream.ranges)
        assert kept == []  # ...and not replicated before
    if len(old) >= n and len(new) >= n:
        moved = sum(ranges_width(s.ranges) for s in streams)
        planned = sum(t.token_range.width for t in plan_transfers(old, new, n))
        assert moved == planned  # one source per range: no range copied twice


@settings(max_examples=60, deadline=None)
@given(st.sets(node_ids, min_size=4, max_size=7), st.integers(2, 3), small_vnodes,
       st.sampled_from(["join", "leave", "remove"]), st.randoms(use_true_random=False))
def test_a_write_on_w_old_replicas_is_on_w_new_replicas(
    nodes: set[str], n: int, vnodes: int, kind: str, rng: random.Random
) -> None:
    """Quorum preservation: data held by any W = N//2+1 old replicas of a token is held by at
    least W new replicas after the plan runs, for joins and leaves (the loser streams its own
    copy) and removals of a dead node (the survivors' merge is streamed)."""
    w = n // 2 + 1
    changed = rng.choice(sorted(nodes))
    if kind == "join":
        old = Ring(nodes - {changed}, vnodes)
        new = Ring(nodes, vnodes)
        alive = set(nodes)
    else:
        old = Ring(nodes, vnodes)
        new = Ring(nodes - {changed}, vnodes)
        alive = set(nodes) if kind == "leave" else set(nodes) - {changed}
    tokens = sample_tokens(rng, old, new, count=60)
    holders = {}
    for token in tokens:
        owners = list(old.preference_list_for_token(token, n))
        holders[token] = set(rng.sample(owners, min(w, len(owners))))
    result = run_plan(old, new, n, alive, tokens, holders)
    for token in tokens:
        new_owners = set(new.preference_list_for_token(token, n))
        assert len(result[token] & new_owners & alive) >= min(w, len(new_owners))


def test_streams_prefer_the_loser_and_fall_back_to_the_merge_of_survivors() -> None:
    """A live loser is the only source; a dead one is replaced by every surviving replica
    of the range; excluded nodes never stream; ranges without a live source are stuck."""
    old = Ring(["a", "b", "c", "d"], 4)
    new = old.without_node("d")
    moves = plan_moves(old, new, 3)
    assert moves and all(m.losers == ("d",) for m in moves)
    streams, stuck = plan_streams(moves, lambda node: True)
    assert not stuck and {s.source for s in streams} == {"d"}
    streams, stuck = plan_streams(moves, lambda node: node != "d")
    assert not stuck and "d" not in {s.source for s in streams}
    for move in moves:
        sources = {s.source for s in streams
                   if s.target == move.target and move.token_range.end in RangeSet(s.ranges)}
        assert sources == set(move.others)
    streams, stuck = plan_streams(moves, lambda node: node == "d", exclude={"d"})
    assert streams == [] and stuck == moves


# -- the derived view ------------------------------------------------------------------------


def member(node: str, status: RingStatus | None = RingStatus.NORMAL,
           state: MemberState = MemberState.ALIVE, removing: str | None = None) -> MemberView:
    return MemberView(node, state, status, removing)


def test_ring_is_sticky_and_enters_on_normal_leaves_on_left() -> None:
    """NORMAL (or no status: an older node) enters the ring; a wiped member saying WAITING
    and a dead or forgotten member stay; LEFT leaves and is remembered as gone; a gone node
    claiming NORMAL stays out until it rejoins from WAITING."""
    view = derive_view(["a", "x"], [member("b"), member("c", None), member("d", RingStatus.WAITING),
                                    member("x", state=MemberState.DEAD)], (), "a", RingStatus.NORMAL)
    assert view.ring == {"a", "b", "c", "x"} and view.movements == () and view.waiting == {"d"}
    wiped = derive_view(view.ring, [member("b", RingStatus.WAITING)], (), "a", RingStatus.NORMAL)
    assert "b" in wiped.ring and wiped.waiting == frozenset()
    left = derive_view(view.ring, [member("b", state=MemberState.LEFT)], (), "a",
                       RingStatus.NORMAL)
    assert "b" not in left.ring and left.gone == {"b"}
    back = derive_view(left.ring, [member("b")], left.gone, "a", RingStatus.NORMAL)
    assert "b" not in back.ring and back.gone == {"b"}
    rejoining = derive_view(left.ring, [member("b", RingStatus.WAITING)], left.gone, "a",
                            RingStatus.NORMAL)
    assert rejoining.gone == frozenset() and "b" not in rejoining.ring
    me_waiting = derive_view(["a", "b"], [member("b")], (), "a", RingStatus.WAITING)
    assert me_waiting.ring == {"b"}
    assert status_of({"ring": "joining"}) is RingStatus.JOINING and status_of({}) is None
    assert status_of({"ring": "bogus"}) is None


def test_movements_and_the_target_ring() -> None:
    """JOINING outside the ring is a join, LEAVING inside is a leave, a live member's
    removing=<ring member> is a removal; the target ring applies them all; movements order by
    node id, and a movement is blocked by those ordered before it."""
    view = derive_view(
        ["a", "b", "c", "x"],
        [member("b", RingStatus.LEAVING), member("j", RingStatus.JOINING),
         member("c", removing="x"), member("x", state=MemberState.DEAD),
         member("y", RingStatus.JOINING, state=MemberState.LEFT)],
        (), "a", RingStatus.NORMAL)
    assert view.movements == (Movement("b", "leave", "b"), Movement("j", "join", "j"),
                              Movement("x", "remove", "c"))
    assert view.target == {"a", "c", "j"}
    assert view.conflicts(Movement("j", "join", "j")) == [Movement("b", "leave", "b")]
    assert view.conflicts(Movement("b", "leave", "b")) == []
    assert [m.label for m in view.movements] == ["leave:b", "join:j", "remove:x"]
    dead_remover = derive_view(["a", "x"], [member("c", removing="x",
                                                   state=MemberState.DEAD)], (), "a",
                               RingStatus.NORMAL)
    assert dead_remover.movements == ()
    mine = derive_view(["a", "b", "x"], [member("b")], (), "a", RingStatus.LEAVING, "x")
    assert [m.label for m in mine.movements] == ["leave:a", "remove:x"]
    joining = derive_view(["b"], [member("b")], (), "a", RingStatus.JOINING)
    assert joining.movements == (Movement("a", "join", "a"),) and joining.ring == {"b"}
    assert movement_target(["a"], [Movement("b", "join", "b")]) == {"a", "b"}
    assert ClusterView(frozenset({"a"})).target == {"a"}


@pytest.mark.parametrize("n", [-1])
def test_plan_moves_refuses_a_negative_replica_count(n: int) -> None:
    """As ring.plan_transfers does."""
    with pytest.raises(ValueError):
        plan_moves(Ring(["a"]), Ring(["a", "b"]), n)


def test_nothing_moves_without_change_or_without_old_replicas() -> None:
    """The same ring plans nothing; the first node of a cluster has nothing to receive."""
    ring = Ring(["a", "b", "c"], 8)
    assert plan_moves(ring, ring, 3) == []
    assert plan_moves(Ring([], 8), Ring(["a"], 8), 3) == []


# -- the membership hooks rebalancing uses ---------------------------------------------------


def _member(node_id: str) -> Membership:
    return Membership(node_id, f"{node_id}.test:7380", MembershipConfig(), random.Random(0),
                      0.0, metadata={"ring": "waiting"})


def _introduce(*members: Membership) -> None:
    """Every member hears of every other alive."""
    for member in members:
        for other in members:
            if other is not member:
                member.receive(other.self_id, Gossip(other.self_id, (MemberUpdate(
                    other.self_id, MemberState.ALIVE, 0, other.self_address,
                    metadata={"ring": "waiting"}),)), 0.5)


def _gossip_to(sender: Membership, receiver: Membership, actions: list[Action]) -> None:
    for action in actions:
        if isinstance(action, Send) and action.to_address == receiver.self_address:
            receiver.receive(sender.self_id, action.message, 1.0)


def test_set_metadata_announces_a_ring_status_at_a_higher_incarnation() -> None:
    """Our own metadata is replaced and pushed at once; a peer takes it (its incarnation is
    higher); a member that left cannot change it."""
    a, b = _member("a"), _member("b")
    _introduce(a, b)
    actions = a.set_metadata({"ring": "joining"}, 1.0)
    (event,) = [x for x in actions if isinstance(x, MemberEvent)]
    assert event.node_id == "a" and event.incarnation == 1
    assert dict(a.get("a").metadata) == {"ring": "joining"}  # type: ignore[union-attr]
    _gossip_to(a, b, actions)
    assert status_of(b.get("a").metadata) is RingStatus.JOINING  # type: ignore[union-attr]
    a.leave(2.0)
    with pytest.raises(RuntimeError):
        a.set_metadata({"ring": "normal"}, 3.0)


def test_remove_declares_another_member_left_everywhere() -> None:
    """remove() applies LEFT at the member's incarnation and gossips it; an unknown member
    needs its address; ourselves cannot be removed; removing twice does nothing."""
    a, b = _member("a"), _member("b")
    _introduce(a, b)
    dead = MemberUpdate("x", MemberState.DEAD, 3, "x.test:7380")
    for member in (a, b):
        member.receive("c", Gossip("c", (dead,)), 0.5)
    actions = a.remove("x", 1.0)
    assert a.get("x").state is MemberState.LEFT  # type: ignore[union-attr]
    assert a.get("x").incarnation == 3  # type: ignore[union-attr]
    _gossip_to(a, b, actions)
    assert b.get("x").state is MemberState.LEFT  # type: ignore[union-attr]
    assert a.remove("x", 2.0) == []
    with pytest.raises(KeyError):
        a.remove("a", 2.0)
    with pytest.raises(KeyError):
        a.remove("ghost", 2.0)
    a.remove("ghost", 2.0, address="ghost.test:7380")
    assert a.get("ghost").state is MemberState.LEFT  # type: ignore[union-attr]
