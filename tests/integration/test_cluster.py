"""Three real ``twistd kvnode`` processes on 127.0.0.1 as one Dynamo-style cluster.

What each test shows, and the timing rules it relies on (see docs/consistency.md and
C{twistkv.core.membership.MembershipConfig}; the nodes run the defaults: protocol period
1 s, ping timeout 0.3 s, suspicion timeout 4 s, N=3, R=W=2, request timeout 2 s):

 - membership converges, and every node can coordinate reads and writes of every key;
 - the headline: 2,000 QUORUM writes through one node while another is SIGKILLed and later
   restarted on the same data dir; every acknowledged write is then on every node, and
   the restarted node holds them itself (hinted handoff, not only quorum reads);
 - a node paused for less than the suspicion timeout is never declared dead;
 - a killed node is suspected, then declared dead, within the detection bound;
 - with 2 of 3 nodes down, QUORUM writes fail with UNAVAILABLE, ONE writes succeed;
 - writes coordinated on both sides of a (crash-made) partition become siblings;
 - a node with another cluster secret cannot join.

Every wait polls with a deadline; every process is killed by the factory's finalizer.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
import redis
from redis.exceptions import ResponseError

from .conftest import Node, NodeFactory, wait_cluster, wait_until

pytestmark = pytest.mark.integration

#: Membership timing of every node here (the kvnode defaults, stated once).
PROTOCOL_PERIOD = 1.0
SUSPICION_TIMEOUT = 4.0
#: Failure detection bound. With 3 members each survivor probes the dead node at least
#: once every 2 protocol periods, and a probe takes one period to fail (direct ping,
#: then indirect pings through the other survivor): suspected within 3 periods. The second
#: survivor's own failed probe confirms the suspicion (Lifeguard: 1 confirmation expected
#: with 3 members), which cuts it to the base suspicion timeout (log10(3) < 1, no scaling).
#: So dead within 3 periods + the suspicion timeout = 7 s, doubled for a loaded 2-core box.
DETECTION_BOUND = 2 * (3 * PROTOCOL_PERIOD + SUSPICION_TIMEOUT)
#: How long a restarted node may take to be alive again in every survivor's view.
REJOIN_TIMEOUT = 20.0
#: How long hints may take to reach a restarted owner (delivery is tried every second).
HANDOFF_TIMEOUT = 30.0

TOTAL_KEYS = 2000
BATCH = 50


def value_for(key: str) -> str:
    return f"value-of-{key}"


def states_of(node: Node, target: str) -> str | None:
    return node.members().get(target)


def read_all(node: Node, keys: Sequence[str], consistency: str) -> list[str | None]:
    """GET every key through C{node} at C{consistency}, pipelined in batches."""
    client = node.session(consistency, timeout=30)
    values: list[str | None] = []
    for start in range(0, len(keys), 200):
        pipe = client.pipeline(transaction=False)
        for key in keys[start:start + 200]:
            pipe.get(key)
        values.extend(pipe.execute())
    assert client.execute_command("CONSISTENCY") == consistency  # still the same connection
    return values


def missing_or_wrong(node: Node, keys: Sequence[str], consistency: str) -> list[str]:
    got = read_all(node, keys, consistency)
    return [key for key, value in zip(keys, got, strict=True) if value != value_for(key)]


# -- a healthy cluster -------------------------------------------------------------


@pytest.fixture(scope="module")
def trio(module_node_factory: NodeFactory) -> list[Node]:
    """Three nodes, started as the README says, that all see each other alive."""
    return module_node_factory.joined_cluster(3)


def test_members_converge(trio: list[Node]) -> None:
    ids = {node.node_id for node in trio}
    for node in trio:
        rows = node.command("MEMBERS")
        assert {row["id"] for row in rows} == ids
        assert {row["state"] for row in rows} == {"alive"}
        assert all(row["in_ring"] for row in rows)
        assert [row["id"] for row in rows if row["self"]] == [node.node_id]


def test_cluster_endpoint_lists_every_node(trio: list[Node]) -> None:
    ids = {node.node_id for node in trio}

    def cluster_view(node: Node) -> dict | None:
        view = node.http_json("/cluster")
        states = {row["id"]: row["state"] for row in view["nodes"]}
        return view if states == dict.fromkeys(ids, "alive") else None

    for node in trio:
        view = wait_until(lambda node=node: cluster_view(node), 10,
                          f"GET /cluster on {node.node_id} lists {sorted(ids)} alive")
        assert view["mode"] == "cluster"
        assert view["replication"] == {"n": 3, "r": 2, "w": 2}
        assert [row["id"] for row in view["nodes"] if row["is_self"]] == [node.node_id]
        assert [row["vnodes"] for row in view["nodes"]] == [128] * 3  # the default per node
    # Key counts per node: a key written at ALL is on all three, and each node's /cluster
    # shows every node's count once its cluster watch has read their STATS.
    assert trio[0].command("SET", "counted", "1", consistency="ALL") is True

    def counted(node: Node) -> list[int] | None:
        keys = [row["keys"] for row in node.http_json("/cluster")["nodes"]]
        return keys if all(isinstance(k, int) and k >= 1 for k in keys) else None

    for node in trio:
        wait_until(lambda node=node: counted(node), 10,
                   f"GET /cluster on {node.node_id} shows every node's key count")
    # RING: the same vnodes per node and every node's key count (asked over STATS).
    ring = trio[1].command("RING")
    assert sorted(row["id"] for row in ring) == sorted(ids), ring
    assert all(row["vnodes"] == 128 and row["keys"] >= 1 for row in ring), ring
    assert sum(row["primary_share"] for row in ring) == pytest.approx(1.0, abs=0.01)
    assert all(row["replica_share"] == 1.0 for row in ring), ring


def test_write_on_one_node_read_on_another(trio: list[Node]) -> None:
    n1, n2, n3 = trio
    assert n1.command("SET", "greeting", "hello") is True
    assert n3.command("GET", "greeting") == "hello"
    assert n2.command("GET", "greeting", consistency="ALL") == "hello"

    where = n2.command("WHERE", "greeting")
    replicas = [row for row in where if row[1] == "replica"]
    assert sorted(row[0] for row in replicas) == ["n1", "n2", "n3"]
    assert all(row[2] == "alive" for row in replicas)
    addresses = {node.node_id: node.peer_address for node in trio}
    assert all(row[3] == addresses[row[0]] for row in replicas)

    # VERSIONS waits for every replica that answers; ALL makes sure all three did.
    versions = n3.command("VERSIONS", "greeting", consistency="ALL")
    assert versions["key"] == "greeting"
    [sibling] = versions["siblings"]
    assert sibling["value"] == "hello"
    assert sibling["node"] == "n1"  # n1 coordinated the write
    assert set(sibling["vector_clock"]) == {"n1"} and sibling["vector_clock"]["n1"] > 0
    assert sibling["tombstone"] is False
    assert sorted(versions["replicas"]) == ["n1", "n2", "n3"]
    for node_id, held in versions["replicas"].items():
        assert held == [sibling], f"replica {node_id} holds {held!r}"


def test_pipelined_replies_keep_their_order(trio: list[Node]) -> None:
    """Redis clients match replies to commands by position. A pipeline that sets the
    consistency level and reads in one write is what redis-py sends for
    C{pipe.execute_command("CONSISTENCY", "ONE"); pipe.get(k)}."""
    n1, _, n3 = trio
    assert n1.command("SET", "ordered", "value") is True
    client = n3.session()
    pipe = client.pipeline(transaction=False)
    pipe.execute_command("CONSISTENCY", "ONE")
    pipe.get("ordered")
    pipe.get("no-such-key")
    pipe.execute_command("CONSISTENCY")
    assert pipe.execute() == ["OK", "value", None, "ONE"]



def test_pipelined_commands_see_the_sets_before_them(trio: list[Node]) -> None:
    """A node queues plain SETs until the end of the reactor turn (to coordinate many
    clients' writes together), yet a pipeline's later commands see them: an INCR (applied
    to the local replica first), KEYS (this node's replica) and a GET, all in one write."""
    n1, _, _ = trio
    pipe = n1.session().pipeline(transaction=False)
    pipe.set("barrier-count", "5")
    pipe.incr("barrier-count")
    pipe.set("barrier-key", "x")
    pipe.keys("barrier-k*")
    pipe.set("barrier-key", "y")
    pipe.get("barrier-key")
    assert pipe.execute() == [True, 6, True, ["barrier-key"], True, "y"]


# -- a short pause is not a failure ----------------------------------------------------


def test_short_pause_is_not_declared_dead(trio: list[Node]) -> None:
    """SIGSTOP for 1.5 s, well under the 4 s suspicion timeout: suspect at worst, never dead.

    Runs on the shared cluster and leaves it as it found it (all alive).
    """
    n1, n2, n3 = trio
    observers = (n1, n2)
    seen: dict[str, set[str]] = {node.node_id: set() for node in observers}

    def observe() -> dict[str, str]:
        now = {node.node_id: states_of(node, "n3") or "unknown" for node in observers}
        for node_id, state in now.items():
            seen[node_id].add(state)
        return now

    pause = 1.5
    n3.kill(signal.SIGSTOP)
    try:
        stopped_at = time.monotonic()
        while time.monotonic() - stopped_at < pause:
            observe()
            time.sleep(0.1)
    finally:
        n3.kill(signal.SIGCONT)
    # Keep watching past the point where a suspicion begun during the pause would have
    # expired (pause + the longest probe + the suspicion timeout)...
    watch_until = stopped_at + pause + 2 * PROTOCOL_PERIOD + SUSPICION_TIMEOUT
    while time.monotonic() < watch_until:
        observe()
        time.sleep(0.1)
    # ...and until n3 is alive again in both views (it refutes any suspicion).
    wait_until(lambda: set(observe().values()) == {"alive"}, REJOIN_TIMEOUT,
               "n3 alive again in n1's and n2's view")
    print(f"n3 states seen during and after a {pause} s pause: {seen}")
    for node_id, states in seen.items():
        assert states <= {"alive", "suspect"}, f"{node_id} saw n3 as {sorted(states)}"
    assert n3.members() == {"n1": "alive", "n2": "alive", "n3": "alive"}


# -- the headline: no acknowledged write is lost across a crash -----------------------


@dataclass
class QuorumWriter:
    """Writes the keys C{hh:0000} ... in pipelined batches through one node's session.

    A key is acknowledged when its own reply is OK. Every other reply is recorded with the
    phase it happened in: UNAVAILABLE errors by phase, anything else as a failure.
    """

    client: redis.Redis
    next_index: int = 0
    acked: list[str] = field(default_factory=list)
    unavailable: dict[str, list[str]] = field(default_factory=dict)
    other_errors: list[str] = field(default_factory=list)
    phases: dict[str, int] = field(default_factory=dict)

    def write(self, count: int, phase: str) -> None:
        count = min(count, TOTAL_KEYS - self.next_index)
        if count <= 0:
            return
        keys = [f"hh:{i:04d}" for i in range(self.next_index, self.next_index + count)]
        self.next_index += count
        self.phases[phase] = self.phases.get(phase, 0) + count
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.set(key, value_for(key))
        replies = pipe.execute(raise_on_error=False)
        for key, reply in zip(keys, replies, strict=True):
            if reply is True:
                self.acked.append(key)
            elif isinstance(reply, ResponseError) and str(reply).startswith("UNAVAILABLE"):
                self.unavailable.setdefault(phase, []).append(f"{key}: {reply}")
            else:
                self.other_errors.append(f"{phase} {key}: {reply!r}")

    @property
    def done(self) -> bool:
        return self.next_index >= TOTAL_KEYS


def test_no_acknowledged_write_lost_across_crash_and_restart(
    node_factory: NodeFactory,
) -> None:
    """2,000 QUORUM writes through n1; n3 is SIGKILLed after 500 and restarted later.

    Rule for UNAVAILABLE (stated, then asserted): with 2 of 3 replicas alive, W=2 is always
    reachable through n1 and n2. Until n3 is declared dead a request to it fails fast
    (connection refused, then the peer pool's backoff) and becomes a coordinator hint;
    afterwards n3 is not contacted at all. So only the batch in flight at the moment of the
    kill may see UNAVAILABLE (at most its BATCH keys); every later batch, sent while the
    survivors are still detecting the failure, after they agree n3 is dead, while n3
    restarts, and after it rejoined, must be acknowledged in full.
    """
    n1, n2, n3 = node_factory.joined_cluster(3)
    writer = QuorumWriter(n1.session("QUORUM", timeout=30))

    # Phase 1: all three up.
    while writer.next_index < 500:
        writer.write(BATCH, "healthy")
    assert n1.metrics()["twistkv_cluster_hints_stored"] == 0

    # Phase 2: n3 crashes, most likely while a batch is in flight; keep writing while n1
    # and n2 find out.
    killer = threading.Timer(0.01, n3.kill, args=(signal.SIGKILL,))
    killer.start()
    writer.write(BATCH, "in flight at the kill")
    killer.join()
    assert not n3.running
    killed_at = time.monotonic()
    while not all(states_of(node, "n3") == "dead" for node in (n1, n2)):
        assert time.monotonic() - killed_at < DETECTION_BOUND, (
            f"n1/n2 did not agree n3 is dead within {DETECTION_BOUND} s: "
            f"{n1.members()} {n2.members()}"
        )
        if writer.next_index < 1300:  # keep 700 keys for the later phases
            writer.write(BATCH // 2, "detecting")
        time.sleep(0.2)
    detected_after = time.monotonic() - killed_at

    # Phase 3: n3 is dead in every survivor's view.
    while writer.next_index < 1600:
        writer.write(BATCH, "dead")
    hints_while_down = n1.metrics()["twistkv_cluster_hints_stored"]

    # Phase 4: n3 restarts on its data dir while writes go on; then the last keys.
    n3.spawn()
    while writer.next_index < 1800:
        writer.write(BATCH // 2, "restarting")
    n3.wait_ready()
    wait_until(
        lambda: all(states_of(node, "n3") == "alive" for node in (n1, n2)),
        REJOIN_TIMEOUT, "n3 alive again in n1's and n2's view",
    )
    while not writer.done:
        writer.write(BATCH, "rejoined")
    assert writer.client.execute_command("CONSISTENCY") == "QUORUM"  # one connection throughout

    assert writer.other_errors == []
    in_flight = writer.unavailable.pop("in flight at the kill", [])
    assert len(in_flight) <= BATCH
    assert writer.unavailable == {}, writer.unavailable
    assert len(writer.acked) >= TOTAL_KEYS - BATCH
    assert writer.next_index == TOTAL_KEYS
    print(f"n3 declared dead {detected_after:.1f} s after SIGKILL; "
          f"{hints_while_down:.0f} hints stored on n1 while it was down; "
          f"{len(writer.acked)} of {TOTAL_KEYS} writes acknowledged; keys per phase "
          f"{writer.phases}; UNAVAILABLE per phase "
          f"{len(in_flight)} UNAVAILABLE in the batch in flight at the kill")

    # Hinted handoff: every hint for n3 is delivered (acknowledged by n3) and deleted.
    def hints_left() -> dict[str, float]:
        return {node.node_id: node.metrics()["twistkv_cluster_hints_stored"]
                for node in (n1, n2, n3)}

    wait_until(lambda: not any(hints_left().values()), HANDOFF_TIMEOUT,
               "every hint delivered")
    delivered = sum(node.metrics()["twistkv_cluster_hints_delivered_total"]
                    for node in (n1, n2))
    # Each key was written once, so no hint was merged into another: every hint n1 held
    # while n3 was dead was delivered, not dropped.
    assert delivered >= hints_while_down > 0

    acked = sorted(writer.acked)
    # First, before any read could repair it: n3's own replica has every acknowledged key.
    # KEYS sees the coordinating node's replica only (docs/consistency.md §9).
    local = set(n3.command("KEYS", "hh:*", timeout=30))
    assert not set(acked) - local, f"{len(set(acked) - local)} acked keys missing on n3"
    assert missing_or_wrong(n3, acked, "ONE") == []
    # Then every node, as coordinator, reads every acknowledged write back at QUORUM.
    for node in (n1, n2, n3):
        assert missing_or_wrong(node, acked, "QUORUM") == [], node.node_id


# -- failure detection -----------------------------------------------------------------


def test_killed_node_is_suspected_then_declared_dead(node_factory: NodeFactory) -> None:
    n1, n2, n3 = node_factory.joined_cluster(3)
    n3.kill(signal.SIGKILL)
    killed_at = time.monotonic()
    history: dict[str, list[tuple[float, str]]] = {"n1": [], "n2": []}
    while True:
        for node in (n1, n2):
            state = states_of(node, "n3") or "unknown"
            events = history[node.node_id]
            if not events or events[-1][1] != state:
                events.append((round(time.monotonic() - killed_at, 2), state))
        if all(events[-1][1] == "dead" for events in history.values()):
            break
        assert time.monotonic() - killed_at < DETECTION_BOUND, (
            f"n3 not dead everywhere within {DETECTION_BOUND} s: {history}"
        )
        time.sleep(0.1)
    for node_id, events in history.items():
        states = [state for _, state in events]
        # Each survivor goes alive -> suspect -> dead (it may have learnt of the suspicion
        # before its first poll, but it never jumps from alive to dead).
        assert states in (["alive", "suspect", "dead"], ["suspect", "dead"]), (node_id, events)
    print(f"n3 timeline after SIGKILL: {history}")


# -- no quorum, no write ---------------------------------------------------------------


@pytest.fixture
def two_down(node_factory: NodeFactory) -> Node:
    """n1 of a three-node cluster whose n2 and n3 were just SIGKILLed."""
    n1, n2, n3 = node_factory.joined_cluster(3)
    n2.kill(signal.SIGKILL)
    n3.kill(signal.SIGKILL)
    return n1


#: Keys whose preference lists put n1 first, second and last (the ring is a function of
#: the node ids only, so these hold for every run; checked with WHERE in the tests).
KEYS_BY_N1_POSITION = {"b": 0, "a": 1, "c": 2}


def test_one_write_succeeds_with_two_of_three_down(two_down: Node) -> None:
    n1 = two_down
    with pytest.raises(ResponseError, match="^UNAVAILABLE write reached "):
        n1.command("SET", "lonely", "v", consistency="QUORUM")
    for key in KEYS_BY_N1_POSITION:
        assert n1.command("SET", key, "v1", consistency="ONE") is True
        assert n1.command("GET", key, consistency="ONE") == "v1"
    with pytest.raises(ResponseError, match="^UNAVAILABLE read reached "):
        n1.command("GET", "lonely", consistency="QUORUM")


def test_unavailable_names_how_many_replicas_answered(two_down: Node) -> None:
    """Only n1 is left, so every QUORUM request reaches exactly 1 of the 2 it needs, and
    the error says so, naming the two dead replicas, whatever n1's place in the
    preference list and however fast n2 and n3 fail."""
    n1 = two_down
    for key, position in KEYS_BY_N1_POSITION.items():
        assert [row[0] for row in n1.command("WHERE", key)].index("n1") == position
    messages = []
    for attempt in range(2):  # the second round runs while the peer pool backs off
        for key in KEYS_BY_N1_POSITION:
            for command in (("SET", key, f"v{attempt}"), ("GET", key)):
                with pytest.raises(ResponseError) as caught:
                    n1.command(*command, consistency="QUORUM")
                messages.append(str(caught.value))
    for message in messages:
        assert re.match(r"UNAVAILABLE (write|read) reached 1 of 2 required replicas "
                        r"\(n2 \w+(?: \w+)?, n3 \w+(?: \w+)?\); ", message), messages


# -- concurrent writes on both sides of a partition become siblings --------------------


def test_writes_on_both_sides_of_a_partition_become_siblings(
    node_factory: NodeFactory,
) -> None:
    """Real processes cannot be partitioned without root, so crashes make the partition:
    n1 writes while n2 and n3 are down, then n2 writes while n1 is down. Neither write
    has seen the other, so their vector clocks are concurrent, whatever the timing.
    """
    n1, n2, n3 = node_factory.joined_cluster(3)
    n2.kill(signal.SIGKILL)
    n3.kill(signal.SIGKILL)
    assert n1.command("SET", "contested", "from-n1", consistency="ONE") is True
    n1.kill(signal.SIGKILL)

    n2.spawn()
    n3.spawn()
    n2.wait_ready()
    n3.wait_ready()
    wait_until(lambda: n2.command("SET", "contested", "from-n2", consistency="ONE") is True,
               REJOIN_TIMEOUT, "n2 coordinates a write once it rejoined with n3")

    n1.start()  # no seeds: it rejoins through the ring it persisted
    wait_cluster([n1, n2, n3], REJOIN_TIMEOUT)
    wait_until(
        lambda: not any(node.metrics()["twistkv_cluster_hints_stored"] for node in (n1, n2, n3)),
        HANDOFF_TIMEOUT, "every hint delivered",
    )

    def both_siblings_everywhere() -> dict | None:
        versions = n3.command("VERSIONS", "contested", consistency="ALL")
        held = versions["replicas"]
        values = {node_id: sorted(v["value"] for v in vs) for node_id, vs in held.items()
                  if isinstance(vs, list)}
        if values == dict.fromkeys(("n1", "n2", "n3"), ["from-n1", "from-n2"]):
            return versions
        return None

    versions = wait_until(both_siblings_everywhere, HANDOFF_TIMEOUT,
                          "both writes held as siblings by all three replicas")
    by_value = {v["value"]: v for v in versions["siblings"]}
    assert set(by_value) == {"from-n1", "from-n2"}
    assert set(by_value["from-n1"]["vector_clock"]) == {"n1"}
    assert set(by_value["from-n2"]["vector_clock"]) == {"n2"}
    # Plain GET is last-writer-wins by HLC: n2 wrote later.
    assert by_value["from-n2"]["hlc"] > by_value["from-n1"]["hlc"]
    assert n1.command("GET", "contested", consistency="QUORUM") == "from-n2"

    # A write through a replica that holds both siblings supersedes both.
    assert n1.command("SET", "contested", "resolved", consistency="ALL") is True
    resolved = n2.command("VERSIONS", "contested", consistency="ALL")
    assert [v["value"] for v in resolved["siblings"]] == ["resolved"]
    assert set(resolved["siblings"][0]["vector_clock"]) == {"n1", "n2"}


# -- the cluster secret keeps strangers out --------------------------------------------


def test_node_with_another_replication_factor_cannot_join(node_factory: NodeFactory) -> None:
    """A node started with --replicas 2 next to a cluster of N=3 would place keys on other
    replicas than its peers do, so that quorums no longer overlap: its handshakes are
    refused with placement_mismatch, both sides log why, and it never joins."""
    n1, n2 = node_factory.joined_cluster(2)
    odd = node_factory.create(
        "odd", extra_args=["--replicas", "2", "--seeds", n1.peer_address]).start()

    def refusals() -> list[str]:
        return [line for line in odd.output().splitlines()
                if "Peer handshake with" in line and "placement_mismatch" in line]

    wait_until(lambda: len(refusals()) >= 1, 15, "the odd node is refused", interval=0.2)
    assert "node 'odd' has replicas=2 but node 'n1' has replicas=3" in refusals()[0], refusals()
    assert any("placement_mismatch" in line for line in n1.output().splitlines()), "n1 silent"
    assert "odd" not in n1.members() and "odd" not in n2.members()
    assert set(odd.members()) == {"odd"}


def test_node_with_another_secret_cannot_join(node_factory: NodeFactory) -> None:
    secret = ["--cluster-secret", "correct-horse-battery-staple"]
    n1, n2 = node_factory.joined_cluster(2, extra_args=secret)
    stranger = node_factory.create(
        "intruder",
        extra_args=["--cluster-secret", "another-secret-of-16+-bytes",
                    "--seeds", n1.peer_address],
    ).start()

    # Its join is refused at the handshake, and its log says why.
    def refusals() -> list[str]:
        return [line for line in stranger.output().splitlines()
                if "Peer handshake with" in line and "auth_failed" in line]

    # Watch until it has been refused on at least two join attempts (retried every 2 s):
    # nobody ever lists it meanwhile.
    listed_by: set[str] = set()

    def refused_twice() -> bool:
        for node in (n1, n2):
            if "intruder" in node.members():
                listed_by.add(node.node_id)
        return len(refusals()) >= 2

    wait_until(refused_twice, 15, "the intruder is refused twice", interval=0.2)
    assert listed_by == set()
    assert "the cluster secrets differ" in refusals()[0], refusals()
    assert any("auth_failed" in line for line in n1.output().splitlines()), "n1 logs nothing"
    assert "intruder" not in n1.members() and "intruder" not in n2.members()
    # It never joined: it knows only itself and refuses to coordinate.
    assert set(stranger.members()) == {"intruder"}
    with pytest.raises(ResponseError, match="^UNAVAILABLE .*has not joined the cluster"):
        stranger.command("SET", "k", "v")
    print("\n".join(refusals()[:2]))
