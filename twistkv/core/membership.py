"""SWIM membership as a sans-IO state machine, with memberlist's Lifeguard refinements.

SWIM (Das, Gupta and Motivala, 2002) detects failures with a constant load per member: every
protocol period a member probes one other member, picked in a shuffled round-robin so that every
member is probed within a bounded time. A probe that gets no direct ack within C{ping_timeout}
asks C{indirect_checks} other members to probe the target for us (PingReq), which tells a dead
member apart from one lossy link. A member that still does not answer is only I{suspected}; the
suspicion is gossiped, the suspect hears it and refutes it by raising its incarnation number, and
only a suspicion that nobody refutes in time turns into Dead. Membership news (rumours) rides
piggybacked on probes, acks and gossip rounds, each rumour a bounded number of times
(C{retransmit_multiplier * ceil(log10(n + 1))}), which is enough for epidemic spread.

Taken from HashiCorp memberlist, because each is cheap and removes a known weakness:

 - A gossip round every C{gossip_interval} pushes queued rumours to C{gossip_fanout} random
   members (L{Gossip}). Piggybacking alone moves news about one hop per protocol period, and a
   refutation races every member's suspicion timer: with piggybacking alone, the simulation in
   the tests saw a member paused for 3 of the 4 suspicion seconds declared dead before its
   refutation reached the last member. Rounds with nothing queued send nothing.
 - Push-pull sync (L{Sync}/L{SyncReply}): a joining member swaps full state with a seed instead
   of waiting for gossip, and every C{sync_interval} a member swaps state with one random live
   member (anti-entropy) and one remembered dead member (which heals partitions: the two sides
   of a partition have declared each other dead and would otherwise never talk again).
 - Lifeguard suspicion (Dadgar et al., 2018): a suspicion starts at a long timeout that shrinks
   towards C{suspicion_timeout} as independent members confirm it, so a single slow or
   partitioned accuser cannot quickly kill a healthy member, while a real failure seen by many is
   still declared quickly. Timeouts grow with C{max(1, log10(n))} because gossip takes longer
   to reach everyone in bigger clusters.
 - Lifeguard local health: a member that misses acks while the members it asked for help do not
   answer at all (no L{Nack}) is probably the slow one itself, so it stretches its own probe
   period and timeout (up to C{awareness_max_multiplier} times) instead of accusing others.
 - Buddy system: whenever we send to a member we believe suspect or dead, the message carries
   that rumour first, so the member learns of it (and refutes) on the first contact.
 - A full-state record saying "dead" is merged as "suspect", so a stale view pushed by push-pull
   gives the member a chance to refute instead of killing it outright.

Incarnation numbers: only a member raises its own, and it does so to refute. A node that
restarts with the same id must not reuse an old incarnation: persist the incarnation carried by
every L{MemberEvent} about yourself and pass C{last + 1} as C{incarnation} on restart. A node that
has lost that state still recovers: the first rumour it hears about its old self (a dead or left
record in a seed's sync reply) carries a higher incarnation, and it refutes above that.

Node ids must be unique in the cluster: two processes with one id refute each other forever.

test-case-name: tests.core.test_membership
"""

from __future__ import annotations

import ipaddress
import math
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from types import MappingProxyType
from urllib.parse import quote, unquote

__all__ = [
    "METADATA_MAX_BYTES",
    "TRANSITIONS",
    "VERBS",
    "Ack",
    "Action",
    "Gossip",
    "IncarnationRule",
    "Member",
    "MemberEvent",
    "MemberState",
    "MemberUpdate",
    "MemberValidationError",
    "Membership",
    "MembershipConfig",
    "MembershipDecodeError",
    "Message",
    "Nack",
    "Ping",
    "PingReq",
    "Send",
    "Sync",
    "SyncReply",
    "decode",
    "encode",
    "validate_address",
    "validate_node_id",
]

#: Upper bound on a member's metadata (UTF-8 bytes of all keys and values). Every sync carries
#: every member's metadata, so this bounds a sync to a few hundred bytes per member.
METADATA_MAX_BYTES = 512
_MAX_WIRE_INT = 2**63 - 1  # seq and incarnation fit any peer's signed 64-bit integer

# Same rule as twistkv.config.valid_node_id (the core may not import it): ids travel in header
# fields and payload tokens, so they must never contain spaces or '='.
_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_HOST_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_ADDRESS = re.compile(
    rf"(?P<host>{_HOST_LABEL}(?:\.{_HOST_LABEL})*|\[(?P<ipv6>[0-9A-Fa-f:.]+)\])"
    r":(?P<port>[0-9]{1,5})"
)
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")


class MemberValidationError(ValueError):
    """A node id, address, incarnation, sequence number or metadata given to us is malformed."""


class MembershipDecodeError(ValueError):
    """A peer sent a membership frame we cannot decode: its fault, never a crash of ours.

    L{decode} raises nothing else, whatever it is fed.
    """


def validate_node_id(node_id: str) -> str:
    """Return C{node_id} if it is 1-63 characters of C{[A-Za-z0-9._-]} starting alphanumeric.

    @raise MemberValidationError: otherwise.
    """
    if not isinstance(node_id, str) or not _NODE_ID.fullmatch(node_id):
        raise MemberValidationError(
            f"invalid node id {node_id!r}: use 1-63 characters from A-Z a-z 0-9 . _ - "
            "starting with a letter or digit"
        )
    return node_id


def validate_address(address: str) -> str:
    """Return C{address} if it is C{host:port} (hostname, IPv4 or C{[IPv6]}; port 1-65535).

    @raise MemberValidationError: otherwise.
    """
    match = _ADDRESS.fullmatch(address) if isinstance(address, str) else None
    valid = match is not None and 1 <= int(match["port"]) <= 65535 and len(address) <= 300
    if match is not None and valid and match["ipv6"] is not None:
        try:
            ipaddress.IPv6Address(match["ipv6"])
        except ValueError:
            valid = False
    if not valid:
        raise MemberValidationError(
            f"invalid peer address {address!r}: expected host:port, host a hostname, "
            "an IPv4 address or a bracketed IPv6 address, port 1-65535"
        )
    return address


def _validate_wire_int(value: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_WIRE_INT:
        raise MemberValidationError(f"{what} must be an int in [0, 2**63), not {value!r}")


def _frozen_metadata(metadata: Mapping[str, str]) -> Mapping[str, str]:
    copy = dict(metadata)
    size = 0
    for key, value in copy.items():
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise MemberValidationError(
                f"metadata must map non-empty str to str: {key!r}={value!r}"
            )
        try:
            size += len(key.encode("utf-8")) + len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise MemberValidationError(f"metadata {key!r} is not valid Unicode") from None
    if size > METADATA_MAX_BYTES:
        raise MemberValidationError(f"metadata is {size} bytes, limit {METADATA_MAX_BYTES}")
    return MappingProxyType(copy)


# --------------------------------------------------------------------------------------------
# States and the transition table
# --------------------------------------------------------------------------------------------


class MemberState(Enum):
    """What we believe about a member's liveness.

    Ring states (joining, normal, leaving) are not liveness and are not here: a member
    announces them in its own metadata (see L{twistkv.core.transfers}), so the transition
    table below stays about failure detection alone.
    """

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


#: States whose members we probe and count as part of the cluster's size.
_LIVE_STATES = frozenset({MemberState.ALIVE, MemberState.SUSPECT})


class IncarnationRule(Enum):
    """How a rumour's incarnation must compare with the record's for the rumour to apply."""

    NEWER = "newer"
    NEWER_OR_EQUAL = "newer-or-equal"


# Rules for applying a rumour ``(state, incarnation)`` about another member to our record of it:
#
#  1. A higher incarnation always wins. Only the member itself raises its incarnation, so a
#     higher one is strictly newer news: a refutation, or a restarted node coming back.
#  2. At equal incarnation the graver state wins: alive < suspect < dead < left. The member has
#     not spoken since, so the only news possible at that incarnation is bad news; left is final
#     for its incarnation because it is the member's own last word.
#  3. A rumour that does not win is dropped and not gossiped further.
#  4. Suspect on suspect at equal incarnation is not a transition but a Lifeguard confirmation: a
#     new accuser shortens the suspicion timeout and the confirmation is gossiped on.
#  5. A rumour about a member we do not know creates its record in the rumour's state (a dead or
#     left record is kept as a tombstone so that older rumours cannot resurrect it).
#  6. Rumours about ourselves never change our record: one that would win under 1-2 is refuted
#     by taking the rumour's incarnation + 1 and gossiping alive (unless we have left).
#
# Timers, not rumours, drive the other transitions: a failed probe suspects the target (as a
# rumour from ourselves), an unrefuted suspicion becomes dead, and a dead or left record is
# forgotten after ``dead_forget_timeout``.
_A, _S, _D, _L = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT
_NEWER, _NEWER_OR_EQUAL = IncarnationRule.NEWER, IncarnationRule.NEWER_OR_EQUAL
#: (current state, rumoured state) -> what the rumour's incarnation must be to apply.
TRANSITIONS: Mapping[tuple[MemberState, MemberState], IncarnationRule] = MappingProxyType(
    {
        (_A, _A): _NEWER,
        (_A, _S): _NEWER_OR_EQUAL,
        (_A, _D): _NEWER_OR_EQUAL,
        (_A, _L): _NEWER_OR_EQUAL,
        (_S, _A): _NEWER,
        (_S, _S): _NEWER,
        (_S, _D): _NEWER_OR_EQUAL,
        (_S, _L): _NEWER_OR_EQUAL,
        (_D, _A): _NEWER,
        (_D, _S): _NEWER,
        (_D, _D): _NEWER,
        (_D, _L): _NEWER_OR_EQUAL,
        (_L, _A): _NEWER,
        (_L, _S): _NEWER,
        (_L, _D): _NEWER,
        (_L, _L): _NEWER,
    }
)


# --------------------------------------------------------------------------------------------
# Records, rumours, messages and actions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """A snapshot of one member as we see it."""

    node_id: str
    #: ``host:port`` of the member's peer endpoint.
    address: str
    state: MemberState
    incarnation: int
    #: The ``now`` at which the member entered C{state} (not reset by same-state updates).
    state_since: float
    #: Opaque, read-only; travels with alive rumours (e.g. HTTP address, version).
    metadata: Mapping[str, str]


@dataclass(frozen=True)
class MemberUpdate:
    """A rumour: "C{node_id} is C{state} at C{incarnation}", piggybacked or in a full sync.

    C{accuser} is set on suspect rumours only: the member whose probe failed, which is what
    makes Lifeguard confirmations countable. C{metadata} is authoritative on alive rumours; on
    others it only seeds the record of a member we did not know.

    @raise MemberValidationError: on a malformed id, address, incarnation or metadata.
    """

    node_id: str
    state: MemberState
    incarnation: int
    address: str
    accuser: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_node_id(self.node_id)
        validate_address(self.address)
        _validate_wire_int(self.incarnation, "incarnation")
        if not isinstance(self.state, MemberState):
            raise MemberValidationError(f"state must be a MemberState, not {self.state!r}")
        if self.state is MemberState.SUSPECT:
            validate_node_id(self.accuser)
        elif self.accuser:
            raise MemberValidationError("only suspect rumours name an accuser")
        object.__setattr__(self, "metadata", _frozen_metadata(self.metadata))


@dataclass(frozen=True)
class Ping:
    """Direct probe of C{target}. C{target} lets a node that took over the address ignore it."""

    seq: int
    source: str
    source_address: str
    target: str
    updates: tuple[MemberUpdate, ...] = ()

    def __post_init__(self) -> None:
        _validate_wire_int(self.seq, "seq")
        validate_node_id(self.source)
        validate_address(self.source_address)
        validate_node_id(self.target)


@dataclass(frozen=True)
class Ack:
    """Answer to a Ping, or forwarded by a helper to answer a PingReq; matched by C{seq}."""

    seq: int
    source: str
    updates: tuple[MemberUpdate, ...] = ()

    def __post_init__(self) -> None:
        _validate_wire_int(self.seq, "seq")
        validate_node_id(self.source)


@dataclass(frozen=True)
class Nack:
    """A helper could not reach a PingReq's target: proof that the requester's links work."""

    seq: int
    source: str
    updates: tuple[MemberUpdate, ...] = ()

    def __post_init__(self) -> None:
        _validate_wire_int(self.seq, "seq")
        validate_node_id(self.source)


@dataclass(frozen=True)
class PingReq:
    """Ask the receiver to probe C{target} and forward its Ack (or a Nack) back under C{seq}."""

    seq: int
    source: str
    source_address: str
    target: str
    target_address: str
    updates: tuple[MemberUpdate, ...] = ()

    def __post_init__(self) -> None:
        _validate_wire_int(self.seq, "seq")
        validate_node_id(self.source)
        validate_address(self.source_address)
        validate_node_id(self.target)
        validate_address(self.target_address)


@dataclass(frozen=True)
class Gossip:
    """Rumours pushed outside any probe: by a gossip round, or a leaving member's farewell."""

    source: str
    updates: tuple[MemberUpdate, ...] = ()

    def __post_init__(self) -> None:
        validate_node_id(self.source)


@dataclass(frozen=True)
class Sync:
    """Push-pull: the sender's full state; the receiver merges it and answers with its own."""

    source: str
    source_address: str
    members: tuple[MemberUpdate, ...] = ()

    def __post_init__(self) -> None:
        validate_node_id(self.source)
        validate_address(self.source_address)


@dataclass(frozen=True)
class SyncReply:
    """The answer to a Sync: the receiver's full state (after merging the Sync)."""

    source: str
    members: tuple[MemberUpdate, ...] = ()

    def __post_init__(self) -> None:
        validate_node_id(self.source)


Message = Ping | Ack | Nack | PingReq | Gossip | Sync | SyncReply


@dataclass(frozen=True)
class Send:
    """Action: deliver C{message} to the peer endpoint at C{to_address} (best effort)."""

    to_address: str
    message: Message


@dataclass(frozen=True)
class MemberEvent:
    """Action: our record of C{node_id} changed at C{at}.

    One event per applied change, including same-state ones (an alive member's new incarnation,
    address or metadata). C{old_state} is None for a member we just learnt of, C{new_state}
    None for one we forgot. Events about ourselves carry the incarnation to persist.
    """

    node_id: str
    old_state: MemberState | None
    new_state: MemberState | None
    incarnation: int
    at: float


Action = Send | MemberEvent


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MembershipConfig:
    """Protocol timing and fan-out. Defaults are memberlist's LAN profile.

    Required ordering, checked on construction (L{ValueError} otherwise):

     - C{gossip_interval < protocol_period}: gossip rounds exist to beat the probes' pace.
     - C{2 * ping_timeout < protocol_period}: the indirect probe (PingReq out, the helper's own
       ping with C{ping_timeout}, Ack or Nack back) must fit in the rest of the period.
     - C{suspicion_timeout >= 2 * protocol_period}: a suspect needs a period to hear the rumour
       and another for its refutation to spread before anyone may declare it dead.
     - C{dead_forget_timeout > suspicion_timeout * suspicion_max_multiplier}: a tombstone must
       outlive every other member's suspicion of the same failure, or their stale views would
       recreate the member we forgot.
    """

    #: Seconds between two probes; each probe has one period to succeed.
    protocol_period: float = 1.0
    #: Seconds to wait for a direct Ack before asking others to probe (PingReq).
    ping_timeout: float = 0.3
    #: How many members are asked to probe a target that missed its direct ping (SWIM's k).
    indirect_checks: int = 3
    #: Base suspicion timeout in seconds, scaled by C{max(1, log10(n))} for n live members; this
    #: is the shortest a suspicion can last (reached with enough confirmations).
    suspicion_timeout: float = 4.0
    #: A suspicion without confirmations lasts this many times the scaled base timeout.
    suspicion_max_multiplier: float = 6.0
    #: Independent accusers that shrink the suspicion to its minimum (capped at n - 2).
    suspicion_confirmations: int = 2
    #: A rumour is piggybacked C{retransmit_multiplier * ceil(log10(n + 1))} times (SWIM's lambda).
    retransmit_multiplier: int = 4
    #: Most rumours piggybacked on one message.
    max_piggyback: int = 8
    #: Seconds between gossip rounds; a round with no queued rumour sends nothing.
    gossip_interval: float = 0.2
    #: Members a gossip round sends the queued rumours to.
    gossip_fanout: int = 3
    #: Lifeguard: a struggling member stretches its period and ping timeout up to this factor.
    awareness_max_multiplier: int = 8
    #: Seconds between join attempts while no seed has answered.
    join_retry_interval: float = 2.0
    #: Seconds between push-pull syncs with a random live member and a random dead one.
    sync_interval: float = 30.0
    #: Seconds a dead or left member is remembered (and retried by sync) before being forgotten.
    dead_forget_timeout: float = 3600.0

    def __post_init__(self) -> None:
        for name in ("protocol_period", "ping_timeout", "suspicion_timeout", "gossip_interval",
                     "join_retry_interval", "sync_interval", "dead_forget_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        for name in ("indirect_checks", "retransmit_multiplier", "max_piggyback",
                     "gossip_fanout", "awareness_max_multiplier"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.suspicion_confirmations < 0:
            raise ValueError("suspicion_confirmations must not be negative")
        if self.suspicion_max_multiplier < 1:
            raise ValueError("suspicion_max_multiplier must be at least 1")
        if not self.gossip_interval < self.protocol_period:
            raise ValueError("gossip_interval must be below protocol_period")
        if not 2 * self.ping_timeout < self.protocol_period:
            raise ValueError("2 * ping_timeout must be below protocol_period (room for PingReq)")
        if self.suspicion_timeout < 2 * self.protocol_period:
            raise ValueError("suspicion_timeout must be at least 2 * protocol_period")
        if not self.dead_forget_timeout > self.suspicion_timeout * self.suspicion_max_multiplier:
            raise ValueError(
                "dead_forget_timeout must exceed suspicion_timeout * suspicion_max_multiplier"
            )


# --------------------------------------------------------------------------------------------
# Wire codec
# --------------------------------------------------------------------------------------------

_VERB_PING = "SWIM_PING"
_VERB_ACK = "SWIM_ACK"
_VERB_NACK = "SWIM_NACK"
_VERB_PINGREQ = "SWIM_PINGREQ"
_VERB_GOSSIP = "SWIM_GOSSIP"
_VERB_SYNC = "SWIM_SYNC"
_VERB_SYNCREPLY = "SWIM_SYNCACK"
#: Every peer-protocol verb this module encodes and decodes. Membership frames are one-way:
#: the transport's request id is not used; replies are matched by the C{seq} field.
VERBS: tuple[str, ...] = (
    _VERB_PING, _VERB_ACK, _VERB_NACK, _VERB_PINGREQ, _VERB_GOSSIP, _VERB_SYNC, _VERB_SYNCREPLY,
)
_NONE = "-"  # placeholder for an empty accuser or metadata token in an update line


def encode(message: Message) -> tuple[str, dict[str, str], bytes]:
    """Return C{(verb, header fields, payload)} for the peer protocol's frame.

    Header values are node ids, addresses and decimals, so never contain spaces or '='. The
    payload holds one rumour per line: C{state node_id incarnation address accuser metadata},
    with C{-} for an empty accuser or metadata, and metadata as C{k=v&k=v} percent-encoded.
    """
    match message:
        case Ping(seq, source, source_address, target, updates):
            fields = {"seq": str(seq), "from": source, "addr": source_address, "target": target}
            return _VERB_PING, fields, _encode_updates(updates)
        case Ack(seq, source, updates):
            return _VERB_ACK, {"seq": str(seq), "from": source}, _encode_updates(updates)
        case Nack(seq, source, updates):
            return _VERB_NACK, {"seq": str(seq), "from": source}, _encode_updates(updates)
        case PingReq(seq, source, source_address, target, target_address, updates):
            fields = {
                "seq": str(seq),
                "from": source,
                "addr": source_address,
                "target": target,
                "target_addr": target_address,
            }
            return _VERB_PINGREQ, fields, _encode_updates(updates)
        case Gossip(source, updates):
            return _VERB_GOSSIP, {"from": source}, _encode_updates(updates)
        case Sync(source, source_address, members):
            return _VERB_SYNC, {"from": source, "addr": source_address}, _encode_updates(members)
        case SyncReply(source, members):
            return _VERB_SYNCREPLY, {"from": source}, _encode_updates(members)
    raise TypeError(f"not a membership message: {message!r}")


def decode(verb: str, fields: Mapping[str, str], payload: bytes) -> Message:
    """Rebuild the message that L{encode} turned into C{(verb, fields, payload)}.

    Header fields this version does not know are ignored, so newer peers may add some.

    @raise MembershipDecodeError: for anything that L{encode} could not have produced.
    """
    if not isinstance(verb, str) or not isinstance(fields, Mapping):
        raise MembershipDecodeError("verb must be a str and fields a mapping")
    if not isinstance(payload, bytes | bytearray):
        raise MembershipDecodeError("payload must be bytes")
    try:
        return _decode(verb, fields, bytes(payload))
    except MemberValidationError as error:
        raise MembershipDecodeError(f"{verb}: {error}") from None


def _decode(verb: str, fields: Mapping[str, str], payload: bytes) -> Message:
    def text(name: str) -> str:
        value = fields.get(name)
        if not isinstance(value, str):
            raise MembershipDecodeError(f"{verb} lacks the {name!r} field")
        return value

    def number(name: str) -> int:
        value = text(name)
        if not _DECIMAL.fullmatch(value) or int(value) > _MAX_WIRE_INT:
            raise MembershipDecodeError(f"{verb} field {name!r} is not a decimal in range")
        return int(value)

    if verb == _VERB_PING:
        return Ping(number("seq"), text("from"), text("addr"), text("target"),
                    _decode_updates(payload))
    if verb == _VERB_ACK:
        return Ack(number("seq"), text("from"), _decode_updates(payload))
    if verb == _VERB_NACK:
        return Nack(number("seq"), text("from"), _decode_updates(payload))
    if verb == _VERB_PINGREQ:
        return PingReq(number("seq"), text("from"), text("addr"), text("target"),
                       text("target_addr"), _decode_updates(payload))
    if verb == _VERB_GOSSIP:
        return Gossip(text("from"), _decode_updates(payload))
    if verb == _VERB_SYNC:
        return Sync(text("from"), text("addr"), _decode_updates(payload))
    if verb == _VERB_SYNCREPLY:
        return SyncReply(text("from"), _decode_updates(payload))
    raise MembershipDecodeError(f"unknown membership verb {verb[:40]!r}")


def _encode_updates(updates: Iterable[MemberUpdate]) -> bytes:
    return "\n".join(_encode_update(update) for update in updates).encode("ascii")


def _encode_update(update: MemberUpdate) -> str:
    metadata = "&".join(
        f"{quote(key, safe='')}={quote(value, safe='')}"
        for key, value in sorted(update.metadata.items())
    )
    return " ".join((update.state.value, update.node_id, str(update.incarnation),
                     update.address, update.accuser or _NONE, metadata or _NONE))


def _decode_updates(payload: bytes) -> tuple[MemberUpdate, ...]:
    if not payload:
        return ()
    try:
        lines = payload.decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise MembershipDecodeError("membership payload is not ASCII") from None
    return tuple(_decode_update(line) for line in lines)


_STATES_BY_TOKEN = {state.value: state for state in MemberState}


def _decode_update(line: str) -> MemberUpdate:
    tokens = line.split(" ")
    if len(tokens) != 6:
        raise MembershipDecodeError(f"update line {line[:60]!r} does not have 6 tokens")
    state_token, node_id, incarnation, address, accuser, metadata = tokens
    state = _STATES_BY_TOKEN.get(state_token)
    if state is None:
        raise MembershipDecodeError(f"unknown member state {state_token[:20]!r}")
    if not _DECIMAL.fullmatch(incarnation) or int(incarnation) > _MAX_WIRE_INT:
        raise MembershipDecodeError(f"incarnation {incarnation[:25]!r} is not a decimal in range")
    return MemberUpdate(
        node_id,
        state,
        int(incarnation),
        address,
        accuser="" if accuser == _NONE else accuser,
        metadata={} if metadata == _NONE else _decode_metadata(metadata),
    )


def _decode_metadata(token: str) -> dict[str, str]:
    metadata: dict[str, str] = {}
    for pair in token.split("&"):
        key, equals, value = pair.partition("=")
        decoded_key, decoded_value = _unquote_canonical(key), _unquote_canonical(value)
        if not equals or not decoded_key or decoded_key in metadata:
            raise MembershipDecodeError(f"bad metadata pair {pair[:40]!r}")
        metadata[decoded_key] = decoded_value
    return metadata


def _unquote_canonical(text: str) -> str:
    """Percent-decode, accepting only the one spelling that L{encode} produces."""
    try:
        decoded = unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise MembershipDecodeError("metadata is not percent-encoded UTF-8") from None
    if quote(decoded, safe="") != text:
        raise MembershipDecodeError(f"metadata {text[:40]!r} is not canonically percent-encoded")
    return decoded


# --------------------------------------------------------------------------------------------
# Internal bookkeeping
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Queued:
    update: MemberUpdate
    transmits: int
    order: int


class _BroadcastQueue:
    """Rumours awaiting piggybacking, least-sent then newest first (memberlist's
    TransmitLimitedQueue). Keyed by member: a newer rumour about a member replaces the queued
    one, so stale news never outlives the news that superseded it."""

    def __init__(self) -> None:
        self._entries: dict[str, _Queued] = {}
        self._pushed = 0

    def push(self, update: MemberUpdate) -> None:
        self._pushed += 1
        self._entries[update.node_id] = _Queued(update, 0, self._pushed)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def take(self, limit: int, retransmit_limit: int, recipient: str) -> list[MemberUpdate]:
        """Rumours for one message to C{recipient}, which is never told about itself here: its
        own alive news is useless to it, and its suspicion is the caller's to put first."""
        chosen = sorted(
            (entry for entry in self._entries.values() if entry.update.node_id != recipient),
            key=lambda entry: (entry.transmits, -entry.order),
        )[:limit]
        for entry in chosen:
            entry.transmits += 1
            if entry.transmits >= retransmit_limit:
                del self._entries[entry.update.node_id]
        return [entry.update for entry in chosen]


@dataclass(slots=True)
class _Suspicion:
    """Lifeguard suspicion: the deadline moves closer with each independent accuser."""

    incarnation: int
    accuser: str
    accusers: set[str]
    started: float
    min_timeout: float
    max_timeout: float
    expected_confirmations: int

    def deadline(self) -> float:
        confirmations = len(self.accusers) - 1
        if self.expected_confirmations < 1 or confirmations >= self.expected_confirmations:
            return self.started + self.min_timeout
        fraction = math.log(confirmations + 1) / math.log(self.expected_confirmations + 1)
        return self.started + self.max_timeout - (self.max_timeout - self.min_timeout) * fraction


@dataclass(slots=True)
class _Probe:
    """Our probe in flight. It ends at C{deadline}, unless acked first."""

    target: str
    seq: int
    incarnation: int
    direct_deadline: float
    deadline: float
    helpers: frozenset[str] = frozenset()
    indirect: bool = False
    nacks: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class _Relay:
    """A probe we run for someone else's PingReq."""

    requester: str
    requester_address: str
    requester_seq: int
    target: str
    deadline: float


# --------------------------------------------------------------------------------------------
# The state machine
# --------------------------------------------------------------------------------------------


class Membership:
    """One member's view of the cluster. Feed it L{tick}, L{receive}, L{join} and L{leave};
    carry out the L{Send} actions it returns and publish its L{MemberEvent}s.

    Call L{tick} at L{next_deadline} (or on any finer fixed beat). After L{leave} the member only
    answers pings and syncs, so that peers learn it left; to come back, build a new
    C{Membership} with a higher incarnation.
    """

    def __init__(
        self,
        self_id: str,
        self_address: str,
        config: MembershipConfig,
        rng: random.Random,
        now: float,
        *,
        metadata: Mapping[str, str] | None = None,
        incarnation: int = 0,
    ) -> None:
        """@param incarnation: start above the last incarnation this node id ever announced."""
        validate_node_id(self_id)
        validate_address(self_address)
        _validate_wire_int(incarnation, "incarnation")
        self.self_id = self_id
        self.self_address = self_address
        self.config = config
        self._rng = rng
        self._members: dict[str, Member] = {
            self_id: Member(self_id, self_address, MemberState.ALIVE, incarnation, now,
                            _frozen_metadata(metadata or {}))
        }
        self._suspicions: dict[str, _Suspicion] = {}
        self._queue = _BroadcastQueue()
        # Announce ourselves too, not only through the seed: two sources of the news of a join
        # make it far less likely that one member misses it until the next periodic sync.
        self._queue.push(self._record_update(self._members[self_id]))
        self._probe: _Probe | None = None
        self._probe_order: list[str] = []
        self._probe_index = 0
        # Start at a random point so that probes of all members started together do not align.
        self._next_probe_at = now + rng.random() * config.protocol_period
        self._relays: dict[int, _Relay] = {}
        # Random start: an Ack meant for a previous process with our address will not match.
        self._seq = rng.randrange(2**32)
        self._awareness = 0
        self._left = False
        self._join_seeds: tuple[str, ...] = ()
        self._joined = False
        self._next_join_at = math.inf
        self._next_sync_at = now + config.sync_interval
        # Idle until a rumour is queued; a rumour queued after a quiet spell goes out at once.
        self._next_gossip_at = now

    # -- queries ------------------------------------------------------------------------------

    @property
    def joined(self) -> bool:
        """Whether a push-pull sync with some member (a seed or any later one) has completed."""
        return self._joined

    @property
    def local_health(self) -> int:
        """Lifeguard awareness score: 0 healthy; n means periods and timeouts are (n+1)x."""
        return self._awareness

    def get(self, node_id: str) -> Member | None:
        """Our record of C{node_id} (ourselves included), or None if unknown or forgotten."""
        return self._members.get(node_id)

    def members(self) -> list[Member]:
        """Every remembered member, ourselves and tombstones included, sorted by id."""
        return [self._members[node_id] for node_id in sorted(self._members)]

    def alive_members(self) -> list[Member]:
        """Members in state ALIVE, ourselves included unless we left; suspects are excluded."""
        return [member for member in self.members() if member.state is MemberState.ALIVE]

    def next_deadline(self) -> float:
        """The earliest C{now} at which L{tick} has work; C{math.inf} if none ever.

        Ask again after every input: a received rumour can make a gossip round due at once (the
        deadline may then lie in the past: tick without delay)."""
        if self._left:
            return math.inf
        probe = self._probe
        deadlines = [self._next_sync_at]
        if probe is None:
            deadlines.append(self._next_probe_at)
        else:
            deadlines.append(probe.deadline if probe.indirect else probe.direct_deadline)
        if self._join_seeds and not self._joined:
            deadlines.append(self._next_join_at)
        if self._queue and self._live_count() > 1:
            deadlines.append(self._next_gossip_at)
        deadlines.extend(relay.deadline for relay in self._relays.values())
        deadlines.extend(suspicion.deadline() for suspicion in self._suspicions.values())
        deadlines.extend(
            member.state_since + self.config.dead_forget_timeout
            for member in self._members.values()
            if member.state not in _LIVE_STATES and member.node_id != self.self_id
        )
        return min(deadlines)

    # -- inputs -------------------------------------------------------------------------------

    def join(self, seed_addresses: Sequence[str], now: float) -> list[Action]:
        """Push-pull full state with every seed, retried on L{tick} until one answers.

        With no seeds other than ourselves we are the first member and count as joined.

        @raise MemberValidationError: a seed address is malformed.
        @raise RuntimeError: this member has left.
        """
        if self._left:
            raise RuntimeError("this member has left; build a new Membership to rejoin")
        seeds = tuple(dict.fromkeys(
            validate_address(seed) for seed in seed_addresses if seed != self.self_address
        ))
        self._join_seeds = seeds
        self._joined = not seeds
        return self._send_join(now)

    def leave(self, now: float) -> list[Action]:
        """Announce that we leave for good: LEFT at a bumped incarnation, gossiped at once to as
        many members as a rumour's whole retransmit budget, since we will not gossip again."""
        if self._left:
            return []
        self._left = True
        me = self._members[self.self_id]
        record = replace(me, state=MemberState.LEFT, incarnation=me.incarnation + 1,
                         state_since=now)
        self._members[self.self_id] = record
        self._queue.push(MemberUpdate(self.self_id, MemberState.LEFT, record.incarnation,
                                      self.self_address))
        self._probe = None
        self._relays.clear()
        actions: list[Action] = [
            MemberEvent(self.self_id, MemberState.ALIVE, MemberState.LEFT, record.incarnation, now)
        ]
        return actions + self._gossip(self._retransmit_limit())

    def set_metadata(self, metadata: Mapping[str, str], now: float) -> list[Action]:
        """Replace our own metadata and announce it: alive at a bumped incarnation (only a
        higher incarnation makes peers take new metadata), gossiped at once.

        Used for the ring status (joining, normal, leaving) that rebalancing gossips.

        @raise MemberValidationError: the metadata is malformed or too big.
        @raise RuntimeError: this member has left.
        """
        if self._left:
            raise RuntimeError("this member has left")
        frozen = _frozen_metadata(metadata)
        me = self._members[self.self_id]
        if me.incarnation + 2 > _MAX_WIRE_INT:
            raise MemberValidationError("incarnation exhausted")
        record = replace(me, incarnation=me.incarnation + 1, metadata=frozen)
        self._members[self.self_id] = record
        self._queue.push(self._record_update(record))
        event = MemberEvent(self.self_id, MemberState.ALIVE, MemberState.ALIVE,
                            record.incarnation, now)
        # Pushed at once to as many members as the rumour's budget: a ring status change
        # should reach peers before the requests that depend on it.
        return [event, *self._gossip(self._retransmit_limit())]

    def remove(self, node_id: str, now: float, address: str | None = None) -> list[Action]:
        """Declare another member LEFT on its behalf (an operator removed a dead node), and
        gossip it as widely as L{leave} does.

        The rumour carries the member's current incarnation, so under the transition table it
        beats alive, suspect and dead at that incarnation everywhere. If the member is in fact
        alive it refutes with a higher incarnation, as it would any false rumour. A member we
        already forgot needs its C{address}; its tombstone then starts at incarnation 0.

        @raise KeyError: the member is ourselves, or unknown and no address is given.
        @raise MemberValidationError: the node id or address is malformed.
        @raise RuntimeError: this member has left.
        """
        if self._left:
            raise RuntimeError("this member has left")
        member = self._members.get(node_id)
        if node_id == self.self_id or (member is None and address is None):
            raise KeyError(node_id)
        if member is None:
            assert address is not None
            update = MemberUpdate(node_id, MemberState.LEFT, 0, address)
        elif member.state is MemberState.LEFT:
            return []
        else:
            update = MemberUpdate(node_id, MemberState.LEFT, member.incarnation, member.address)
        actions = self._apply(update, now)
        return actions + self._gossip(self._retransmit_limit())

    def tick(self, now: float) -> list[Action]:
        """Run every timer that is due at C{now}: relays, the probe, suspicions, tombstones,
        gossip, join retries and periodic sync."""
        if self._left:
            return []
        actions: list[Action] = []
        self._expire_relays(now, actions)
        self._advance_probe(now, actions)
        for node_id, suspicion in list(self._suspicions.items()):
            if now >= suspicion.deadline():
                address = self._members[node_id].address
                actions += self._apply(
                    MemberUpdate(node_id, MemberState.DEAD, suspicion.incarnation, address), now
                )
        for member in list(self._members.values()):
            if (member.state not in _LIVE_STATES and member.node_id != self.self_id
                    and now >= member.state_since + self.config.dead_forget_timeout):
                del self._members[member.node_id]
                actions.append(MemberEvent(member.node_id, member.state, None,
                                           member.incarnation, now))
        if self._queue and self._live_count() > 1 and now >= self._next_gossip_at:
            self._next_gossip_at = now + self.config.gossip_interval
            actions += self._gossip(self.config.gossip_fanout)
        if self._join_seeds and not self._joined and now >= self._next_join_at:
            actions += self._send_join(now)
        if now >= self._next_sync_at:
            self._next_sync_at = now + self.config.sync_interval
            actions += self._periodic_sync()
        return actions

    def receive(self, sender: str, message: Message, now: float) -> list[Action]:
        """Handle one message from the peer whose node id the transport established (HELLO).

        A message whose C{source} is not C{sender} is dropped: it was misrouted or forged.
        """
        if message.source != sender or sender == self.self_id:
            return []
        actions: list[Action] = []
        if isinstance(message, Sync | SyncReply):
            actions += self._merge_state(message.source, message.members, now)
        else:
            for update in message.updates:
                actions += self._apply(update, now)
        match message:
            case Ping(seq, source, source_address, target) if target == self.self_id:
                actions.append(Send(source_address,
                                    Ack(seq, self.self_id, self._piggyback(source))))
            case Ack(seq, source):
                actions += self._on_ack(seq, source)
            case Nack(seq, source):
                probe = self._probe
                if probe is not None and probe.seq == seq and source in probe.helpers:
                    probe.nacks.add(source)
            case PingReq() if not self._left and message.target != self.self_id:
                actions.append(self._relay(message, now))
            case Sync(source, source_address):
                actions.append(Send(source_address, SyncReply(self.self_id, self._full_state())))
            case SyncReply():
                self._joined = True
        return actions

    # -- probing ------------------------------------------------------------------------------

    def _advance_probe(self, now: float, actions: list[Action]) -> None:
        probe = self._probe
        if probe is not None and not probe.indirect and now >= probe.direct_deadline:
            actions += self._ask_helpers(probe, now)
        if probe is not None and now >= probe.deadline:
            self._probe = None
            actions += self._conclude(probe, now)
        if self._probe is not None or now < self._next_probe_at:
            return
        period = self._scaled(self.config.protocol_period)
        self._next_probe_at = now + period
        target = self._next_probe_target()
        if target is None:
            return
        self._probe = _Probe(target.node_id, self._next_seq(), target.incarnation,
                             direct_deadline=now + self._scaled(self.config.ping_timeout),
                             deadline=now + period)
        actions.append(Send(target.address, Ping(
            self._probe.seq, self.self_id, self.self_address, target.node_id,
            self._piggyback(target.node_id),
        )))

    def _ask_helpers(self, probe: _Probe, now: float) -> list[Action]:
        probe.indirect = True
        # If we ran late (a paused process, a busy reactor), the helpers still get the time the
        # period meant them to have: our own slowness is not evidence against the target.
        indirect_time = self._scaled(self.config.protocol_period - self.config.ping_timeout)
        probe.deadline = max(probe.deadline, now + indirect_time)
        target = self._members.get(probe.target)
        if target is None:
            return []
        candidates = [m for m in self._others_in({MemberState.ALIVE}) if m.node_id != probe.target]
        helpers = self._rng.sample(candidates, min(len(candidates), self.config.indirect_checks))
        probe.helpers = frozenset(helper.node_id for helper in helpers)
        return [
            Send(helper.address, PingReq(probe.seq, self.self_id, self.self_address,
                                         target.node_id, target.address,
                                         self._piggyback(helper.node_id)))
            for helper in helpers
        ]

    def _conclude(self, probe: _Probe, now: float) -> list[Action]:
        """End an unanswered probe: suspect its target."""
        # Lifeguard: helpers that could not even send a Nack point at our own links.
        missing = len(probe.helpers) - len(probe.nacks) if probe.helpers else 1
        self._adjust_awareness(missing)
        target = self._members.get(probe.target)
        if target is None or target.state not in _LIVE_STATES:
            return []
        return self._apply(MemberUpdate(probe.target, MemberState.SUSPECT, probe.incarnation,
                                        target.address, accuser=self.self_id), now)

    def _on_ack(self, seq: int, source: str) -> list[Action]:
        probe = self._probe
        if (probe is not None and probe.seq == seq
                and (source == probe.target or source in probe.helpers)):
            self._probe = None
            if not probe.indirect:
                self._adjust_awareness(-1)
            return []
        relay = self._relays.get(seq)
        if relay is None or source != relay.target:
            return []
        del self._relays[seq]
        return [Send(relay.requester_address,
                     Ack(relay.requester_seq, self.self_id, self._piggyback(relay.requester)))]

    def _relay(self, request: PingReq, now: float) -> Send:
        seq = self._next_seq()
        self._relays[seq] = _Relay(request.source, request.source_address, request.seq,
                                   request.target, now + self.config.ping_timeout)
        return Send(request.target_address, Ping(seq, self.self_id, self.self_address,
                                                 request.target, self._piggyback(request.target)))

    def _expire_relays(self, now: float, actions: list[Action]) -> None:
        for seq, relay in list(self._relays.items()):
            if now >= relay.deadline:
                del self._relays[seq]
                actions.append(Send(relay.requester_address, Nack(
                    relay.requester_seq, self.self_id, self._piggyback(relay.requester))))

    def _next_probe_target(self) -> Member | None:
        """Next live member in a shuffled round-robin, reshuffled once per round (SWIM 4.3)."""
        for reshuffle in (False, True):
            if reshuffle:
                self._probe_order = [m.node_id for m in self._others_in(_LIVE_STATES)]
                self._rng.shuffle(self._probe_order)
                self._probe_index = 0
            while self._probe_index < len(self._probe_order):
                member = self._members.get(self._probe_order[self._probe_index])
                self._probe_index += 1
                if member is not None and member.state in _LIVE_STATES:
                    return member
        return None

    def _scaled(self, timeout: float) -> float:
        return timeout * (self._awareness + 1)

    def _adjust_awareness(self, delta: int) -> None:
        self._awareness = max(0, min(self.config.awareness_max_multiplier - 1,
                                     self._awareness + delta))

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) % (_MAX_WIRE_INT + 1)
        return self._seq

    # -- rumours ------------------------------------------------------------------------------

    def _apply(self, update: MemberUpdate, now: float) -> list[Action]:
        """Apply one rumour under the rules stated above L{TRANSITIONS}."""
        if update.node_id == self.self_id:
            return self._refute(update, now)
        current = self._members.get(update.node_id)
        if current is None:
            record = Member(update.node_id, update.address, update.state, update.incarnation,
                            now, update.metadata)
            return self._commit(None, record, update, now)
        if (update.state is MemberState.SUSPECT and current.state is MemberState.SUSPECT
                and update.incarnation == current.incarnation):
            suspicion = self._suspicions[update.node_id]
            if update.accuser not in suspicion.accusers:
                suspicion.accusers.add(update.accuser)
                self._queue.push(update)
            return []
        if not _wins(update, current):
            return []
        if update.state is MemberState.ALIVE:
            address, metadata = update.address, update.metadata
        else:
            address, metadata = current.address, current.metadata
        since = current.state_since if update.state is current.state else now
        record = Member(update.node_id, address, update.state, update.incarnation, since,
                        metadata)
        return self._commit(current, record, update, now)

    def _commit(self, old: Member | None, new: Member, update: MemberUpdate,
                now: float) -> list[Action]:
        self._members[new.node_id] = new
        self._suspicions.pop(new.node_id, None)
        if new.state is MemberState.SUSPECT:
            self._suspicions[new.node_id] = self._start_suspicion(update, now)
        was_live = old is not None and old.state in _LIVE_STATES
        if new.state in _LIVE_STATES and not was_live and new.node_id not in self._probe_order:
            # SWIM 4.3: a new member goes to a random place among those not yet probed this round.
            position = self._rng.randint(self._probe_index, len(self._probe_order))
            self._probe_order.insert(position, new.node_id)
        self._queue.push(_gossip_form(update))
        return [MemberEvent(new.node_id, old.state if old else None, new.state,
                            new.incarnation, now)]

    def _refute(self, update: MemberUpdate, now: float) -> list[Action]:
        me = self._members[self.self_id]
        # Outbidding the largest wire incarnation is impossible; only a corrupt or hostile peer
        # sends it, and leaving must still be able to add one.
        if self._left or not _wins(update, me) or update.incarnation + 2 > _MAX_WIRE_INT:
            return []
        if update.state in (MemberState.SUSPECT, MemberState.DEAD):
            self._adjust_awareness(1)  # Lifeguard: being suspected hints that we are slow.
        record = replace(me, incarnation=update.incarnation + 1)
        self._members[self.self_id] = record
        self._queue.push(self._record_update(record))
        return [MemberEvent(self.self_id, MemberState.ALIVE, MemberState.ALIVE,
                            record.incarnation, now)]

    def _start_suspicion(self, update: MemberUpdate, now: float) -> _Suspicion:
        live = self._live_count()
        min_timeout = self.config.suspicion_timeout * max(1.0, math.log10(live))
        return _Suspicion(
            incarnation=update.incarnation,
            accuser=update.accuser,
            accusers={update.accuser},
            started=now,
            min_timeout=min_timeout,
            max_timeout=min_timeout * self.config.suspicion_max_multiplier,
            expected_confirmations=max(0, min(self.config.suspicion_confirmations, live - 2)),
        )

    def _merge_state(self, source: str, records: Iterable[MemberUpdate],
                     now: float) -> list[Action]:
        """Merge a peer's full state. A "dead" record about a member we know is taken as
        "suspect" if we hold it live (memberlist does the same): a stale view must not kill
        without giving the member a chance to refute."""
        actions: list[Action] = []
        for record in records:
            known = self._members.get(record.node_id)
            if (record.state is MemberState.DEAD and record.node_id != self.self_id
                    and known is not None and known.state in _LIVE_STATES):
                record = MemberUpdate(record.node_id, MemberState.SUSPECT, record.incarnation,
                                      record.address, accuser=source)
            actions += self._apply(record, now)
        return actions

    def _record_update(self, member: Member) -> MemberUpdate:
        suspicion = self._suspicions.get(member.node_id)
        return MemberUpdate(member.node_id, member.state, member.incarnation, member.address,
                            accuser=suspicion.accuser if suspicion else "",
                            metadata=member.metadata)

    def _full_state(self) -> tuple[MemberUpdate, ...]:
        return tuple(self._record_update(member) for member in self.members())

    def _piggyback(self, recipient: str) -> tuple[MemberUpdate, ...]:
        """Rumours for a message to C{recipient}, led by what we hold against it if anything
        (buddy system: a suspect learns of its suspicion on first contact)."""
        member = self._members.get(recipient)
        if member is not None and member.state in (MemberState.SUSPECT, MemberState.DEAD):
            about = _gossip_form(self._record_update(member))
            queued = self._queue.take(self.config.max_piggyback - 1, self._retransmit_limit(),
                                      recipient)
            return (about, *queued)
        return tuple(self._queue.take(self.config.max_piggyback, self._retransmit_limit(),
                                      recipient))

    def _gossip(self, fanout: int) -> list[Action]:
        live = self._others_in(_LIVE_STATES)
        actions: list[Action] = []
        for member in self._rng.sample(live, min(len(live), fanout)):
            updates = self._piggyback(member.node_id)
            if updates:
                actions.append(Send(member.address, Gossip(self.self_id, updates)))
        return actions

    def _retransmit_limit(self) -> int:
        return self.config.retransmit_multiplier * math.ceil(math.log10(self._live_count() + 1))

    def _live_count(self) -> int:
        return sum(1 for member in self._members.values() if member.state in _LIVE_STATES)

    def _others_in(self, states: Iterable[MemberState]) -> list[Member]:
        wanted = frozenset(states)
        return [m for m in self.members() if m.node_id != self.self_id and m.state in wanted]

    # -- push-pull ----------------------------------------------------------------------------

    def _send_join(self, now: float) -> list[Action]:
        self._next_join_at = now + self.config.join_retry_interval
        sync = self._sync_message()
        return [Send(seed, sync) for seed in self._join_seeds]

    def _periodic_sync(self) -> list[Action]:
        actions: list[Action] = []
        for states in (_LIVE_STATES, {MemberState.DEAD}):
            candidates = self._others_in(states)
            if candidates:
                actions.append(Send(self._rng.choice(candidates).address, self._sync_message()))
        return actions

    def _sync_message(self) -> Sync:
        return Sync(self.self_id, self.self_address, self._full_state())


def _wins(update: MemberUpdate, current: Member) -> bool:
    rule = TRANSITIONS[(current.state, update.state)]
    if rule is IncarnationRule.NEWER:
        return update.incarnation > current.incarnation
    return update.incarnation >= current.incarnation


def _gossip_form(update: MemberUpdate) -> MemberUpdate:
    """Piggybacked rumours carry metadata only when alive, where it is authoritative."""
    if update.state is MemberState.ALIVE or not update.metadata:
        return update
    return replace(update, metadata={})
