"""Tests for twistkv.core.quorum: consistency levels, write and read coordination."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twistkv.core.quorum import (
    ConsistencyLevel,
    FailureReason,
    InvalidConsistencyLevel,
    ReadCoordination,
    ReadOutcome,
    Replica,
    ReplicaSet,
    Status,
    WriteCoordination,
    WriteOutcome,
)

# Versions in these tests are integers: a higher number supersedes a lower one,
# standing in for vector clocks (core/versioning.py) without depending on them.


def newest(versions: list[int]) -> list[int]:
    """Reconcile: keep only the newest version."""
    return [max(versions)] if versions else []


def differs(reply: list[int], reconciled: list[int]) -> bool:
    """Stale: the replica's sibling set is not exactly the reconciled one."""
    return sorted(set(reply)) != reconciled


def read(
    replicas: list[Replica | str], required: int, deadline: float = 10.0
) -> ReadCoordination[int]:
    return ReadCoordination(1, replicas, required, deadline, newest, differs)


# Consistency levels ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "one", "quorum", "all_"),
    [(1, 1, 1, 1), (2, 1, 2, 2), (3, 1, 2, 3), (4, 1, 3, 4), (5, 1, 3, 5)],
)
def test_required_replies_per_level(n: int, one: int, quorum: int, all_: int) -> None:
    """ONE needs 1, QUORUM a strict majority (n//2+1), ALL every replica."""
    assert ConsistencyLevel.ONE.required(n) == one
    assert ConsistencyLevel.QUORUM.required(n) == quorum
    assert ConsistencyLevel.ALL.required(n) == all_


@given(st.integers(1, 50))
def test_quorum_reads_and_writes_overlap(n: int) -> None:
    """Any QUORUM read set and QUORUM write set share a replica (R + W > N)."""
    assert 2 * ConsistencyLevel.QUORUM.required(n) > n


def test_required_refuses_empty_replica_sets() -> None:
    """A replication factor below 1 is a configuration bug."""
    with pytest.raises(ValueError):
        ConsistencyLevel.ONE.required(0)


@pytest.mark.parametrize(
    ("text", "level"),
    [
        ("one", ConsistencyLevel.ONE),
        ("Quorum", ConsistencyLevel.QUORUM),
        (" ALL ", ConsistencyLevel.ALL),
    ],
)
def test_parse_is_case_insensitive(text: str, level: ConsistencyLevel) -> None:
    """Levels parse from RESP/HTTP/CLI input in any letter case."""
    assert ConsistencyLevel.parse(text) is level


@pytest.mark.parametrize("text", ["", "two", "majority", "0"])
def test_parse_refuses_unknown_levels_clearly(text: str) -> None:
    """Unknown names raise InvalidConsistencyLevel (a ValueError) naming the valid choices."""
    with pytest.raises(InvalidConsistencyLevel, match="expected ONE, QUORUM or ALL"):
        ConsistencyLevel.parse(text)
    assert issubclass(InvalidConsistencyLevel, ValueError)


# Construction ----------------------------------------------------------------------


def test_replica_sets_are_validated() -> None:
    """Replica nodes must be distinct and the requirement within 1..N; a node cannot hint for itself."""
    with pytest.raises(ValueError):
        WriteCoordination(1, ["a", "a"], 1, 1.0)
    with pytest.raises(ValueError):
        WriteCoordination(1, ["a", Replica("a", hinted_for="b")], 1, 1.0)
    with pytest.raises(ValueError):
        WriteCoordination(1, ["a", "b"], 3, 1.0)
    with pytest.raises(ValueError):
        read(["a"], 0)
    with pytest.raises(ValueError):
        Replica("a", hinted_for="a")
    with pytest.raises(ValueError):
        Replica("")
    assert WriteCoordination(1, ["a"], 1, 1.0).replicas == (Replica("a"),)


# Writes ------------------------------------------------------------------------------


def test_write_succeeds_at_w_distinct_acks() -> None:
    """W=2 of 3: one ack is not enough, a repeated or foreign ack adds nothing, a second does."""
    write = WriteCoordination(7, ["a", "b", "c"], 2, deadline=5.0)
    assert write.on_ack("a").status is Status.PENDING
    assert write.on_ack("a").acks == 1
    assert write.on_ack("zz").acks == 1
    assert write.on_ack("b") == WriteOutcome(Status.SUCCEEDED, 2, 0, 0, 1)


def test_write_fails_as_soon_as_w_is_impossible() -> None:
    """W=2 of 3: the second refusal fails the write at once, without waiting for the deadline."""
    write = WriteCoordination(7, ["a", "b", "c"], 2, deadline=5.0)
    assert write.on_nack("a", "disk full").status is Status.PENDING
    outcome = write.on_nack("b", "overloaded")
    assert outcome == WriteOutcome(Status.FAILED, 0, 0, 2, 1, FailureReason.REFUSED)
    assert write.nack_reasons == {"a": "disk full", "b": "overloaded"}


def test_write_times_out_at_the_deadline_only() -> None:
    """A timer firing early changes nothing; at the deadline a pending write fails with counts."""
    write = WriteCoordination(7, ["a", "b", "c"], 3, deadline=5.0)
    write.on_ack("a")
    assert write.on_timeout(4.999).status is Status.PENDING
    assert write.on_timeout(5.0) == WriteOutcome(Status.FAILED, 1, 0, 0, 2, FailureReason.TIMEOUT)


def test_write_outcome_is_final_once_decided() -> None:
    """After success, late nacks, acks and timeouts leave the outcome untouched."""
    write = WriteCoordination(7, ["a", "b", "c"], 1, deadline=5.0)
    decided = write.on_ack("a")
    write.on_nack("b", "late")
    write.on_ack("c")
    write.on_timeout(99.0)
    assert write.outcome == decided
    assert write.nack_reasons == {}


def test_stand_in_acks_count_towards_w_and_are_reported() -> None:
    """Sloppy quorum: a stand-in holding a hint counts towards W, and the outcome says how many did."""
    replicas: list[Replica | str] = ["a", Replica("d", hinted_for="b"), "c"]
    write = WriteCoordination(7, replicas, 2, deadline=5.0)
    write.on_ack("d")
    outcome = write.on_ack("a")
    assert outcome.status is Status.SUCCEEDED
    assert (outcome.acks, outcome.hinted_acks) == (2, 1)


write_events = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["ack", "nack"]), st.sampled_from("abcdefz"), st.just(0.0)),
        st.tuples(st.just("timeout"), st.just(""), st.floats(0.0, 20.0)),
    ),
    max_size=25,
)


@settings(max_examples=200)
@given(st.integers(1, 6), st.data(), write_events)
def test_write_safety_under_any_interleaving(
    n: int, data: st.DataObject, events: list[tuple[str, str, float]]
) -> None:
    """For any interleaving: success needs W distinct acks, failure needs W to be impossible or
    the deadline to have passed, and a decided outcome never changes."""
    w = data.draw(st.integers(1, n))
    hinted = data.draw(st.sets(st.integers(0, n - 1)))
    nodes = set("abcdef"[:n])
    replicas = [
        Replica(node, "owner" if i in hinted else None) for i, node in enumerate("abcdef"[:n])
    ]
    deadline = 10.0
    write = WriteCoordination(3, replicas, w, deadline)
    acked: set[str] = set()
    nacked: set[str] = set()
    deadline_passed = False
    decided: WriteOutcome | None = None
    for kind, node, now in events:
        news = decided is None and node in nodes and node not in acked | nacked
        if kind == "timeout":
            outcome = write.on_timeout(now)
            deadline_passed |= now >= deadline
        elif kind == "ack":
            outcome = write.on_ack(node)
            if news:
                acked.add(node)
        else:
            outcome = write.on_nack(node, "no")
            if news:
                nacked.add(node)
        assert outcome == write.outcome
        if decided is not None:
            assert outcome == decided
            continue
        possible = len(acked) + (n - len(acked) - len(nacked)) >= w
        if outcome.status is Status.SUCCEEDED:
            assert outcome.acks == len(acked) >= w
        elif outcome.status is Status.FAILED:
            assert not possible or deadline_passed
            assert outcome.reason is (FailureReason.TIMEOUT if possible else FailureReason.REFUSED)
        else:
            assert len(acked) < w and possible and not deadline_passed
        assert (outcome.acks, outcome.nacks) == (len(acked), len(nacked))
        assert outcome.hinted_acks == sum(1 for r in replicas if r.node in acked and r.hinted_for)
        if outcome.status is not Status.PENDING:
            decided = outcome


# Reads -------------------------------------------------------------------------------


def test_read_answers_at_r_replies_then_collects_for_repair() -> None:
    """R=2 of 3: the answer comes with the second reply; the third is still used for repair."""
    coordination = read(["a", "b", "c"], 2)
    assert coordination.on_reply("a", [1]).status is Status.PENDING
    outcome = coordination.on_reply("b", [3])
    assert outcome == ReadOutcome(Status.SUCCEEDED, 2, 0, 1, None, (3,))
    assert not coordination.finished
    assert coordination.on_reply("c", [4]) == outcome  # the answer given stands
    assert coordination.finished
    assert coordination.reconciled == [4]
    assert [r.node for r in coordination.repair_targets] == ["a", "b"]


def test_not_found_replies_are_repaired_and_all_absent_is_empty() -> None:
    """An empty reply means "not found": stale when others have the key; all empty answers ()."""
    coordination = read(["a", "b"], 2)
    coordination.on_reply("a", [])
    assert coordination.on_reply("b", [2]).value == (2,)
    assert [r.node for r in coordination.repair_targets] == ["a"]
    absent = read(["a", "b"], 2)
    absent.on_reply("a", [])
    assert absent.on_reply("b", []).value == ()
    assert absent.repair_targets == ()


def test_reconcile_sees_every_version_flattened() -> None:
    """reconcile() receives the siblings of all replies so far as one list."""
    seen: list[list[int]] = []

    def recording(versions: list[int]) -> list[int]:
        seen.append(sorted(versions))
        return newest(versions)

    coordination = ReadCoordination(1, ["a", "b"], 2, 10.0, recording, differs)
    coordination.on_reply("a", [1, 2])
    coordination.on_reply("b", [5])
    assert seen[-1] == [1, 2, 5]


def test_read_fails_when_r_becomes_impossible_but_keeps_collecting() -> None:
    """R=2 of 3 with two failures fails at once; the last reply still counts for repair."""
    coordination = read(["a", "b", "c"], 2)
    coordination.on_failure("a", "storage_error")
    outcome = coordination.on_failure("b", "timeout")
    assert outcome == ReadOutcome(Status.FAILED, 0, 2, 1, FailureReason.REFUSED, None)
    assert coordination.failure_reasons == {"a": "storage_error", "b": "timeout"}
    assert not coordination.finished
    coordination.on_reply("c", [1])
    assert coordination.finished and coordination.outcome == outcome


def test_deadline_ends_collection_and_fails_pending_reads() -> None:
    """At the deadline a pending read fails; later replies are ignored, silent replicas not repaired."""
    coordination = read(["a", "b", "c"], 3, deadline=5.0)
    coordination.on_reply("a", [1])
    coordination.on_reply("b", [2])
    assert coordination.on_timeout(4.0).status is Status.PENDING
    outcome = coordination.on_timeout(5.0)
    assert (outcome.status, outcome.reason, outcome.missing) == (
        Status.FAILED,
        FailureReason.TIMEOUT,
        1,
    )
    assert coordination.finished
    coordination.on_reply("c", [9])
    assert coordination.replies == {"a": [1], "b": [2]}
    assert [r.node for r in coordination.repair_targets] == ["a"]


def test_deadline_after_success_keeps_the_answer() -> None:
    """A timer firing after the answer only stops collection; the outcome stays succeeded."""
    coordination = read(["a", "b"], 1, deadline=5.0)
    answered = coordination.on_reply("a", [1])
    assert coordination.on_timeout(6.0) == answered
    assert coordination.finished


def test_duplicate_and_foreign_replies_are_ignored() -> None:
    """Only a replica's first reply counts; nodes outside the replica set are ignored."""
    coordination = read(["a", "b"], 2)
    coordination.on_reply("a", [1])
    coordination.on_reply("a", [7])
    coordination.on_failure("a", "late")
    coordination.on_reply("x", [9])
    assert coordination.outcome.status is Status.PENDING
    assert coordination.replies == {"a": [1]}


def test_repair_targets_carry_the_stand_in_hint() -> None:
    """A stale stand-in is reported with its hinted owner, so its repair is stored as a hint."""
    coordination = read(["a", Replica("d", hinted_for="b")], 2)
    coordination.on_reply("a", [2])
    coordination.on_reply("d", [1])
    assert coordination.repair_targets == (Replica("d", hinted_for="b"),)


read_events = st.lists(
    st.one_of(
        st.tuples(
            st.just("reply"), st.sampled_from("abcdez"), st.lists(st.integers(0, 5), max_size=3)
        ),
        st.tuples(st.just("failure"), st.sampled_from("abcdez"), st.just([])),
        st.tuples(
            st.just("timeout"), st.just(""), st.lists(st.integers(0, 20), min_size=1, max_size=1)
        ),
    ),
    max_size=20,
)


@settings(max_examples=200)
@given(st.integers(1, 5), st.data(), read_events)
def test_read_safety_and_repair_under_any_interleaving(
    n: int, data: st.DataObject, events: list[tuple[str, str, list[int]]]
) -> None:
    """For any interleaving: no answer before R distinct replies, the answer is reconcile() of
    exactly those, a decided outcome never changes, and repair targets are exactly the stale
    replicas among those that replied before collection ended."""
    r = data.draw(st.integers(1, n))
    nodes = "abcde"[:n]
    deadline = 10
    coordination = read(list(nodes), r, float(deadline))
    replies: dict[str, list[int]] = {}
    failed: set[str] = set()
    deadline_passed = False
    decided: ReadOutcome[int] | None = None
    for kind, node, argument in events:
        finished = deadline_passed or len(replies) + len(failed) == n
        news = not finished and node in nodes and node not in replies and node not in failed
        if kind == "reply":
            outcome = coordination.on_reply(node, argument)
            if news:
                replies[node] = argument
        elif kind == "failure":
            outcome = coordination.on_failure(node, "no")
            if news:
                failed.add(node)
        else:
            outcome = coordination.on_timeout(float(argument[0]))
            deadline_passed |= not finished and argument[0] >= deadline
        if decided is not None:
            assert outcome == decided
        elif outcome.status is Status.SUCCEEDED:
            assert len(replies) == r
            assert outcome.value == tuple(newest([v for vs in replies.values() for v in vs]))
            decided = outcome
        elif outcome.status is Status.FAILED:
            possible = n - len(failed) >= r
            assert len(replies) < r and (not possible or deadline_passed)
            decided = outcome
        else:
            assert outcome.value is None and len(replies) < r and not deadline_passed
        assert coordination.finished == (deadline_passed or len(replies) + len(failed) == n)
        assert coordination.replies == replies
        final = newest([v for vs in replies.values() for v in vs])
        assert coordination.reconciled == final
        assert {t.node for t in coordination.repair_targets} == {
            node for node, reply in replies.items() if differs(reply, final)
        }


def test_a_shared_replica_set_behaves_like_the_plain_list() -> None:
    """Writes built on one ReplicaSet decide exactly as with the list of replicas, count
    hinted acks, and do not share their tallies; a bad set is refused when it is built."""
    shared = ReplicaSet([Replica("a"), Replica("d", hinted_for="b"), Replica("c")])
    first = WriteCoordination(1, shared, 2, deadline=5.0)
    second = WriteCoordination(2, shared, 2, deadline=5.0)
    plain = WriteCoordination(3, [Replica("a"), Replica("d", hinted_for="b"), Replica("c")], 2,
                              deadline=5.0)
    for write in (first, plain):
        write.on_ack("d")
        assert write.on_ack("a") == WriteOutcome(Status.SUCCEEDED, 2, 1, 0, 1)
    assert second.outcome == WriteOutcome(Status.PENDING, 0, 0, 0, 3)
    assert second.replicas == plain.replicas
    with pytest.raises(ValueError):
        ReplicaSet(["a", "a"])
    with pytest.raises(ValueError):
        WriteCoordination(4, shared, 4, deadline=5.0)
