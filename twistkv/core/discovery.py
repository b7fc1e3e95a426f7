"""LAN discovery (seed 002): the announce datagram and the decision to join. Sans-IO.

With C{--discovery udp} every node broadcasts an announce on one UDP port every few seconds
and listens on that port; a node that hears a peer it should join hands the peer's address
to membership as a seed (C{Membership.join}). Discovery only finds addresses: the peer
handshake and SWIM still decide who is a member, so a forged announce can at worst make a
node dial an address, where the handshake refuses anything that is not a cluster peer.

An announce is one line of printable ASCII (human-readable with C{tcpdump -A})::

    TKVD 1 cluster=twistkv node=n1 addr=10.0.0.1:7380 members=1 ts=1767225600000 nonce=<hex>
        [mac=<hex>]

 - C{TKVD 1}: magic and format version; an unknown version is refused.
 - C{members}: how many live members (the sender included) the sender knows; it tells an
   alone node from a cluster (see L{decide}).
 - C{ts} (Unix milliseconds) and C{nonce} (16..64 random bytes, hex): with a cluster secret,
   an announce older or newer than the replay window, or whose nonce was already seen, is
   dropped.
 - C{mac}: present exactly when the sender has a cluster secret: HMAC-SHA256 keyed with the
   secret over a label and the length-prefixed fields (L{announce_mac}), in the style of the
   peer handshake's proofs (L{twistkv.core.peerwire}).

Anything that is not a well-formed announce makes L{decode_announce} raise L{DiscoveryError},
and nothing else, whatever the bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import struct
from collections import OrderedDict
from collections.abc import Collection, Container, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from twistkv.core.membership import MemberValidationError, validate_address, validate_node_id

__all__ = [
    "ANNOUNCE_MAGIC",
    "ANNOUNCE_VERSION",
    "DEFAULT_BROADCAST_ADDRESS",
    "DEFAULT_DISCOVERY_PORT",
    "DEFAULT_INTERVAL",
    "DEFAULT_REPLAY_WINDOW",
    "MAX_ANNOUNCE_BYTES",
    "REASONS",
    "Announce",
    "DiscoveryError",
    "DiscoveryIdentity",
    "DiscoveryState",
    "ReplayCache",
    "Verdict",
    "announce_mac",
    "decide",
    "decode_announce",
    "encode_announce",
    "is_loopback_address",
    "make_announce",
]

ANNOUNCE_MAGIC = "TKVD"
#: Bumped on any incompatible change of the announce format.
ANNOUNCE_VERSION = 1
#: UDP port nodes announce on and listen to (next to 7379 clients and 7380 peers).
DEFAULT_DISCOVERY_PORT = 7381
#: The limited broadcast address: every host of the sender's network segment.
DEFAULT_BROADCAST_ADDRESS = "255.255.255.255"
#: Seconds between two announces of a node (seed 002: every 5 seconds).
DEFAULT_INTERVAL = 5.0
#: With a secret: how far (seconds) an announce's timestamp may be from our clock.
DEFAULT_REPLAY_WINDOW = 30.0
#: Longest datagram that can be an announce; longer ones are refused unread.
MAX_ANNOUNCE_BYTES = 1024

_MAC_LABEL = b"twistkv-discovery-announce"
_MIN_NONCE = 16
_MAX_NONCE = 64
_MAX_MEMBERS = 2**31 - 1
_MAX_TIMESTAMP = 2**63 - 1
_U32 = struct.Struct(">I")
_MAX_HANDED = 1024  # addresses remembered for the cooldown; the oldest go first
_TOKEN = re.compile(r"[\x21-\x7e]+")
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")
_HEX = re.compile(r"(?:[0-9a-f]{2})+")
_FIELDS = ("cluster", "node", "addr", "members", "ts", "nonce")
_OPTIONAL_FIELDS = ("mac",)

#: Every reason a L{Verdict} may give -> what it means (the docs' table mirrors this).
REASONS: Mapping[str, str] = MappingProxyType(
    {
        "join": "hand the announcer's address to membership as a seed",
        "other_cluster": "the announce names another cluster",
        "self": "our own announce (broadcasts loop back to the sender)",
        "same_address": "another node announces our own peer address",
        "auth_mismatch": "one side has a cluster secret and the other has none",
        "auth_failed": "the HMAC is wrong: a different secret, or a forged announce",
        "stale": "with a secret: the timestamp is outside the replay window",
        "replay": "with a secret: this nonce was already seen",
        "loopback_address": "the announcer advertises a loopback or wildcard address "
        "that no other host can dial (it needs --advertise)",
        "known": "the announcer is already a live member in our view",
        "await": "we are in a cluster and the announcer is alone: it will join us",
        "other_joins": "two clusters met: the other side's nodes join ours",
        "recently_handed": "this address was handed to membership moments ago",
    }
)


class DiscoveryError(ValueError):
    """A datagram is not a well-formed announce, or an announce would not be one.

    C{code} says which rule was broken (for counters); the message quotes at most a short
    snippet of the hostile input.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


def _snippet(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")


def _check_name(what: str, value: object) -> str:
    try:
        return validate_node_id(value)  # type: ignore[arg-type]
    except MemberValidationError:
        raise DiscoveryError(
            f"bad_{what}", f"{what} {_snippet(str(value))} is not 1-63 of [A-Za-z0-9._-]"
        ) from None


def _check_address(value: object) -> str:
    try:
        return validate_address(value)  # type: ignore[arg-type]
    except MemberValidationError:
        raise DiscoveryError(
            "bad_addr", f"address {_snippet(str(value))} is not host:port"
        ) from None


def _check_int(what: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise DiscoveryError(f"bad_{what}", f"{what} must be an int in [{low}, {high}]")
    return value


@dataclass(frozen=True)
class Announce:
    """One node's announce, validated on construction.

    @raise DiscoveryError: a field breaks the format's rules.
    """

    cluster: str
    node_id: str
    #: The peer address (host:port) the announcer is dialled at; its membership address.
    address: str
    #: Live members the announcer knows, itself included.
    members: int
    #: The announcer's wall clock, Unix milliseconds.
    timestamp_ms: int
    nonce: bytes
    #: Lower-case hex HMAC-SHA256; None when the announcer has no cluster secret.
    mac: str | None = None
    version: int = ANNOUNCE_VERSION

    def __post_init__(self) -> None:
        if self.version != ANNOUNCE_VERSION:
            raise DiscoveryError("version", f"announce version {self.version!r} is not supported")
        _check_name("cluster", self.cluster)
        _check_name("node", self.node_id)
        _check_address(self.address)
        _check_int("members", self.members, 1, _MAX_MEMBERS)
        _check_int("ts", self.timestamp_ms, 0, _MAX_TIMESTAMP)
        if not isinstance(self.nonce, bytes) or not _MIN_NONCE <= len(self.nonce) <= _MAX_NONCE:
            raise DiscoveryError("bad_nonce", f"nonce must be {_MIN_NONCE}..{_MAX_NONCE} bytes")
        if self.mac is not None and (
            not isinstance(self.mac, str) or len(self.mac) != 64 or not _HEX.fullmatch(self.mac)
        ):
            raise DiscoveryError("bad_mac", "mac must be 64 lower-case hex digits")


@dataclass(frozen=True)
class DiscoveryIdentity:
    """What this node announces, and the secret it signs and checks announces with."""

    cluster: str
    node_id: str
    #: Our peer address as membership knows it (the advertised --peer-listen address).
    address: str
    #: The cluster secret (the peer handshake's); None: announces are neither signed nor checked.
    secret: bytes | None = None

    def __post_init__(self) -> None:
        _check_name("cluster", self.cluster)
        _check_name("node", self.node_id)
        _check_address(self.address)
        if self.secret is not None and not (isinstance(self.secret, bytes) and self.secret):
            raise ValueError("an empty cluster secret would authenticate anyone; use None")


def _length_prefixed(*parts: bytes) -> bytes:
    return b"".join(_U32.pack(len(part)) + part for part in parts)


def announce_mac(secret: bytes, announce: Announce) -> str:
    """HMAC-SHA256 over the label, then every field but the mac, each length-prefixed
    (u32 big-endian): version, cluster, node id, address, members, timestamp, nonce."""
    message = _MAC_LABEL + _length_prefixed(
        str(announce.version).encode("ascii"),
        announce.cluster.encode("ascii"),
        announce.node_id.encode("ascii"),
        announce.address.encode("ascii"),
        str(announce.members).encode("ascii"),
        str(announce.timestamp_ms).encode("ascii"),
        announce.nonce,
    )
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def make_announce(identity: DiscoveryIdentity, *, members: int, now: float, nonce: bytes) -> Announce:
    """Our announce at C{now} (Unix seconds), signed if we have a secret.

    @param members: live members we know, ourselves included (at least 1).
    @param nonce: fresh random bytes (16..64), e.g. C{os.urandom(16)}.
    """
    unsigned = Announce(identity.cluster, identity.node_id, identity.address,
                        max(1, members), int(now * 1000), nonce)
    if identity.secret is None:
        return unsigned
    return Announce(unsigned.cluster, unsigned.node_id, unsigned.address, unsigned.members,
                    unsigned.timestamp_ms, unsigned.nonce, announce_mac(identity.secret, unsigned))


def encode_announce(announce: Announce) -> bytes:
    """The datagram for C{announce}: one ASCII line ending in a newline."""
    parts = [
        ANNOUNCE_MAGIC, str(announce.version),
        f"cluster={announce.cluster}", f"node={announce.node_id}", f"addr={announce.address}",
        f"members={announce.members}", f"ts={announce.timestamp_ms}",
        f"nonce={announce.nonce.hex()}",
    ]
    if announce.mac is not None:
        parts.append(f"mac={announce.mac}")
    return (" ".join(parts) + "\n").encode("ascii")


def _decimal(what: str, text: str) -> int:
    if not _DECIMAL.fullmatch(text):
        raise DiscoveryError(f"bad_{what}", f"{what} {_snippet(text)} is not a decimal")
    return int(text)


def decode_announce(data: bytes) -> Announce:
    """Parse one datagram.

    @raise DiscoveryError: C{data} is not a well-formed announce of a version we speak.
        Nothing else is raised, whatever C{data} is.
    """
    if not isinstance(data, bytes | bytearray):
        raise DiscoveryError("bad_datagram", "a datagram must be bytes")
    if len(data) > MAX_ANNOUNCE_BYTES:
        raise DiscoveryError("too_long", f"datagram of {len(data)} bytes; limit {MAX_ANNOUNCE_BYTES}")
    try:
        text = bytes(data).decode("ascii")
    except UnicodeDecodeError:
        raise DiscoveryError("bad_datagram", "an announce is printable ASCII") from None
    if text.endswith("\n"):
        text = text[:-1]
    tokens = text.split(" ")
    if not all(_TOKEN.fullmatch(token) for token in tokens):
        raise DiscoveryError(
            "bad_datagram", "an announce is printable ASCII tokens separated by single spaces"
        )
    if len(tokens) < 2 or tokens[0] != ANNOUNCE_MAGIC:
        raise DiscoveryError("bad_magic", f"not a twistkv announce: {_snippet(text)}")
    version = _decimal("version", tokens[1])
    if version != ANNOUNCE_VERSION:
        raise DiscoveryError("version", f"announce version {version} is not supported")
    fields: dict[str, str] = {}
    for token in tokens[2:]:
        key, equals, value = token.partition("=")
        if not equals or not value:
            raise DiscoveryError("bad_field", f"field {_snippet(token)} is not key=value")
        if key not in _FIELDS and key not in _OPTIONAL_FIELDS:
            raise DiscoveryError("bad_field", f"unknown field {_snippet(key)}")
        if key in fields:
            raise DiscoveryError("bad_field", f"field {_snippet(key)} appears twice")
        fields[key] = value
    missing = [key for key in _FIELDS if key not in fields]
    if missing:
        raise DiscoveryError("bad_field", f"announce lacks {', '.join(missing)}")
    nonce_text = fields["nonce"]
    if not _HEX.fullmatch(nonce_text):
        raise DiscoveryError("bad_nonce", "nonce is not lower-case hex")
    return Announce(
        cluster=fields["cluster"],
        node_id=fields["node"],
        address=fields["addr"],
        members=_decimal("members", fields["members"]),
        timestamp_ms=_decimal("ts", fields["ts"]),
        nonce=bytes.fromhex(nonce_text),
        mac=fields.get("mac"),
        version=version,
    )


def is_loopback_address(address: str) -> bool:
    """Whether C{address}'s host means "this host" to whoever dials it (loopback, wildcard)."""
    host = address.rpartition(":")[0].strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


@dataclass(frozen=True)
class Verdict:
    """What to do with one announce: C{seed} is the address to join, or None; C{reason} is a
    key of L{REASONS}."""

    seed: str | None
    reason: str
    announce: Announce | None = None

    @property
    def authenticated(self) -> bool:
        """Whether the announce passed every authentication and replay check."""
        return self.reason not in _UNAUTHENTICATED


_UNAUTHENTICATED = frozenset(
    {"other_cluster", "self", "auth_mismatch", "auth_failed", "stale", "replay"}
)


def decide(
    announce: Announce,
    identity: DiscoveryIdentity,
    live_members: Collection[str],
    now: float,
    *,
    source_is_loopback: bool = False,
    seen_nonces: Container[bytes] = frozenset(),
    replay_window: float = DEFAULT_REPLAY_WINDOW,
) -> Verdict:
    """Decide whether C{announce}'s address should be handed to membership as a seed.

    Checks in order: cluster name, ourselves, authentication (with a secret: the MAC, then
    the timestamp within C{replay_window} seconds of C{now}, then the nonce not in
    C{seen_nonces}), an address nobody else can dial, membership.

    Who joins whom: an announcer we hold live is "known". A node alone (no live member but
    itself) joins any announcer. A node in a cluster leaves alone announcers to join it
    ("await"), so that an established cluster never leaves its joined state for a newcomer.
    When two clusters meet (both sides count more than one member), the cluster with fewer
    members, ties broken by the smaller node id, joins the other: exactly one side acts, and
    one push-pull sync merges both views.

    @param live_members: node ids we hold ALIVE or SUSPECT, ourselves included or not.
    @param source_is_loopback: the datagram came from a loopback address (then a loopback
        advertised address is reachable: every node is on this host).
    """
    if announce.cluster != identity.cluster:
        return Verdict(None, "other_cluster", announce)
    if announce.node_id == identity.node_id:
        return Verdict(None, "self", announce)
    secret = identity.secret
    if (secret is None) != (announce.mac is None):
        return Verdict(None, "auth_mismatch", announce)
    if secret is not None:
        assert announce.mac is not None
        if not hmac.compare_digest(announce_mac(secret, announce), announce.mac):
            return Verdict(None, "auth_failed", announce)
        if abs(announce.timestamp_ms - now * 1000) > replay_window * 1000:
            return Verdict(None, "stale", announce)
        if announce.nonce in seen_nonces:
            return Verdict(None, "replay", announce)
    if announce.address == identity.address:
        return Verdict(None, "same_address", announce)
    if not source_is_loopback and is_loopback_address(announce.address):
        return Verdict(None, "loopback_address", announce)
    live = set(live_members)
    if announce.node_id in live:
        return Verdict(None, "known", announce)
    live.add(identity.node_id)
    if len(live) > 1:
        if announce.members <= 1:
            return Verdict(None, "await", announce)
        if (announce.members, announce.node_id) < (len(live), identity.node_id):
            return Verdict(None, "other_joins", announce)
    return Verdict(announce.address, "join", announce)


class ReplayCache:
    """Nonces of authenticated announces, remembered until their timestamp leaves the window.

    Bounded: past C{capacity} the oldest nonce is forgotten (only announces that carried a
    valid MAC are added, so only a secret holder can fill it).
    """

    def __init__(self, window: float = DEFAULT_REPLAY_WINDOW, capacity: int = 4096) -> None:
        if window <= 0 or capacity < 1:
            raise ValueError("window must be positive and capacity at least 1")
        self.window = window
        self.capacity = capacity
        self._expiry: OrderedDict[bytes, float] = OrderedDict()

    def __contains__(self, nonce: object) -> bool:
        return nonce in self._expiry

    def __len__(self) -> int:
        return len(self._expiry)

    def add(self, nonce: bytes, now: float) -> None:
        """Remember C{nonce} until C{now} plus twice the window (its timestamp is within one
        window of C{now}, and it is refused as stale one window after its timestamp)."""
        self.expire(now)
        self._expiry.pop(nonce, None)
        self._expiry[nonce] = now + 2 * self.window
        while len(self._expiry) > self.capacity:
            self._expiry.popitem(last=False)

    def expire(self, now: float) -> None:
        """Forget nonces whose announces would now be refused as stale anyway."""
        while self._expiry:
            nonce, expiry = next(iter(self._expiry.items()))
            if expiry > now:
                break
            del self._expiry[nonce]


class DiscoveryState:
    """One node's discovery decisions over time: decoding, L{decide}, replay cache and a
    cooldown, so that one address is handed to membership at most once per C{rejoin_after}
    seconds (membership retries a join by itself until a seed answers)."""

    def __init__(
        self,
        identity: DiscoveryIdentity,
        *,
        replay_window: float = DEFAULT_REPLAY_WINDOW,
        rejoin_after: float = 30.0,
        max_nonces: int = 4096,
    ) -> None:
        self.identity = identity
        self.replay_window = replay_window
        self.rejoin_after = rejoin_after
        self._nonces = ReplayCache(replay_window, max_nonces)
        self._handed: dict[str, float] = {}

    def announce(self, live_members: Collection[str], now: float, nonce: bytes) -> bytes:
        """The datagram to broadcast now."""
        members = len(set(live_members) | {self.identity.node_id})
        return encode_announce(make_announce(self.identity, members=members, now=now, nonce=nonce))

    def receive(
        self,
        data: bytes,
        now: float,
        live_members: Collection[str],
        *,
        source_is_loopback: bool = False,
    ) -> Verdict:
        """Decide about one received datagram.

        @raise DiscoveryError: C{data} is not an announce (and nothing else is raised).
        """
        announce = decode_announce(data)
        self._nonces.expire(now)
        verdict = decide(
            announce, self.identity, live_members, now,
            source_is_loopback=source_is_loopback, seen_nonces=self._nonces,
            replay_window=self.replay_window,
        )
        if self.identity.secret is not None and verdict.authenticated:
            self._nonces.add(announce.nonce, now)
        if verdict.seed is None:
            return verdict
        for address, at in list(self._handed.items()):
            if now - at >= self.rejoin_after or at > now:
                del self._handed[address]
        if verdict.seed in self._handed:
            return Verdict(None, "recently_handed", announce)
        self._handed[verdict.seed] = now
        while len(self._handed) > _MAX_HANDED:
            del self._handed[next(iter(self._handed))]
        return verdict
