"""The data and cluster-view commands: put, get, delete, batch, members, ring, where.

Each function takes a connected client (see L{twistkv.cli._client.connect}) and returns
an L{Outcome}; the command line and the REPL share them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import redis

from twistkv.cli._client import Address, command, errors_mapped, text
from twistkv.cli._errors import EXIT_NOT_FOUND, UsageError
from twistkv.cli._output import Outcome, format_seconds, percent, table, value_json

__all__ = [
    "put",
    "get",
    "delete",
    "batch",
    "members",
    "ring",
    "where",
    "fetch_members",
    "member_rows",
    "leave",
    "remove",
    "join",
    "repair",
    "rebalance",
]


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", errors="surrogateescape")


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def put(client: redis.Redis, address: Address | str, key: str, value: str | bytes,
        ttl: float | None = None) -> Outcome:
    """SET key value [PX ttl]."""
    args: list[Any] = ["SET", _b(key), _b(value)]
    if ttl is not None:
        if ttl <= 0:
            raise UsageError("--ttl must be a positive number of seconds")
        args += ["PX", max(1, int(ttl * 1000))]
    with errors_mapped(address):
        command(client, *args)
    return Outcome({"key": key, "ok": True}, "OK")


def get(client: redis.Redis, address: Address | str, key: str) -> Outcome:
    """GET key: the raw value on stdout, exit 1 when the key does not exist."""
    with errors_mapped(address):
        value = command(client, "GET", _b(key))
    if value is None:
        return Outcome({"key": key, "found": False, "value": None}, b"", code=EXIT_NOT_FOUND,
                       stderr=f"key {key!r} not found")
    raw = bytes(value)
    return Outcome({"key": key, "found": True, **value_json(raw)}, raw + b"\n")


def delete(client: redis.Redis, address: Address | str, keys: Sequence[str]) -> Outcome:
    """DEL key [key ...]: how many existed."""
    if not keys:
        raise UsageError("delete needs at least one key")
    with errors_mapped(address):
        count = int(command(client, "DEL", *[_b(k) for k in keys]))
    noun = "key" if len(keys) == 1 else "keys"
    return Outcome({"deleted": count, "requested": len(keys), "keys": list(keys)},
                   f"deleted {count} of {len(keys)} {noun}")


def batch(client: redis.Redis, address: Address | str, pairs: Sequence[str]) -> Outcome:
    """MSET k1 v1 k2 v2 ...; not atomic across keys in a cluster."""
    if not pairs or len(pairs) % 2:
        raise UsageError("batch needs key value pairs: batch k1 v1 [k2 v2 ...]")
    with errors_mapped(address):
        command(client, "MSET", *[_b(p) for p in pairs])
    count = len(pairs) // 2
    return Outcome({"written": count, "keys": list(pairs[0::2])},
                   f"OK ({count} {'key' if count == 1 else 'keys'} written)")


def fetch_members(client: redis.Redis, address: Address | str) -> list[dict[str, Any]]:
    """MEMBERS as a list of plain dicts with text keys and values."""
    with errors_mapped(address):
        reply = command(client, "MEMBERS")
    return [{text(k): (text(v) if isinstance(v, bytes) else v) for k, v in row.items()}
            for row in reply]


def member_rows(rows: Sequence[dict[str, Any]]) -> str:
    return table(
        ["ID", "STATE", "CLIENT", "PEER", "HTTP", "RING", "FOR", "INC"],
        [[
            f"{m['id']}{' *' if m.get('self') else ''}",
            str(m.get("state", "?")).upper(),
            m.get("client") or "-",
            m.get("address") or "-",
            m.get("http") or "-",
            "yes" if m.get("in_ring") else "no",
            format_seconds(m.get("since_s")),
            m.get("incarnation", "-"),
        ] for m in rows],
        right=[7],
    )


def members(client: redis.Redis, address: Address | str) -> Outcome:
    """Every member as the answering node sees it."""
    rows = fetch_members(client, address)
    counts: dict[str, int] = {}
    for m in rows:
        counts[str(m.get("state"))] = counts.get(str(m.get("state")), 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    me = next((m["id"] for m in rows if m.get("self")), "?")
    body = member_rows(rows)
    footer = (f"\n{len(rows)} members ({summary}); * = {me}, the node at {address} that answered;"
              " FOR = time in this state")
    return Outcome(rows, body + footer)


def ring(client: redis.Redis, address: Address | str) -> Outcome:
    """RING: vnodes, ownership shares and replica key counts per node."""
    with errors_mapped(address):
        reply = command(client, "RING")
    rows = [{text(k): (text(v) if isinstance(v, bytes) else v) for k, v in row.items()}
            for row in reply]
    body = table(
        ["ID", "STATE", "VNODES", "PRIMARY", "REPLICA", "KEYS"],
        [[r["id"], str(r.get("state", "?")).upper(), r.get("vnodes"),
          percent(_float(r.get("primary_share"))), percent(_float(r.get("replica_share"))),
          "-" if r.get("keys") is None else r["keys"]] for r in rows],
        right=[2, 3, 4, 5],
    )
    vnodes = sum(int(r.get("vnodes") or 0) for r in rows)
    footer = (f"\n{len(rows)} nodes, {vnodes} vnodes. PRIMARY: share of the key space a node is"
              " first replica for; REPLICA: share it holds a copy of; KEYS: records in its"
              " replica (- = no answer)")
    return Outcome(rows, body + footer)


def where(client: redis.Redis, address: Address | str, key: str) -> Outcome:
    """WHERE key: the key's replicas in preference order, then its stand-ins."""
    with errors_mapped(address):
        reply = command(client, "WHERE", _b(key))
    try:
        clients = {m["id"]: m.get("client") for m in fetch_members(client, address)}
    except Exception:  # noqa: BLE001 - client addresses are a nicety
        clients = {}
    rows: list[dict[str, Any]] = []
    for row in reply:
        node, role, state, peer = (text(x) for x in row)
        rows.append({"node": node, "role": role, "state": state, "address": peer,
                     "client": str(clients.get(node) or "") or None})
    body = table(
        ["#", "NODE", "ROLE", "STATE", "PEER", "CLIENT"],
        [[i, r["node"], r["role"], str(r["state"]).upper(), r["address"] or "-", r["client"] or "-"]
         for i, r in enumerate(rows, 1)],
        right=[0],
    )
    replicas = sum(1 for r in rows if r["role"] == "replica")
    header = f"key {key!r}: {replicas} replicas in preference order, then stand-ins for hints"
    return Outcome({"key": key, "nodes": rows}, header + "\n" + body)


def _admin(client: redis.Redis, address: Address | str, *words: str) -> Any:
    with errors_mapped(address):
        return command(client, *words)


def leave(client: redis.Redis, address: Address | str) -> Outcome:
    """LEAVE: the node hands its ranges to their new owners, leaves, then shuts down."""
    reply = text(_admin(client, address, "LEAVE"))
    return Outcome({"node": str(address), "reply": reply},
                   f"{address}: {reply}\nWatch progress with: twistkv rebalance")


def remove(client: redis.Redis, address: Address | str, node_id: str) -> Outcome:
    """REMOVE node-id: re-replicate a dead node's ranges from the survivors."""
    reply = text(_admin(client, address, "REMOVE", node_id))
    return Outcome({"node": node_id, "reply": reply}, f"{address}: {reply}")


def join(client: redis.Redis, address: Address | str, peer: str) -> Outcome:
    """JOIN host:port: a lone, empty node joins the cluster of that peer."""
    reply = text(_admin(client, address, "JOIN", peer))
    return Outcome({"peer": peer, "reply": reply}, f"{address}: {reply}")


def repair(client: redis.Redis, address: Address | str) -> Outcome:
    """REPAIR: a full Merkle anti-entropy pass with every live peer, now."""
    reply = _admin(client, address, "REPAIR")
    summary = _jsonable(reply)
    body = "\n".join(f"{key}: {value}" for key, value in summary.items())
    return Outcome(summary, body)


def rebalance(client: redis.Redis, address: Address | str) -> Outcome:
    """REBALANCE: ring status and range movements in progress."""
    status = _jsonable(_admin(client, address, "REBALANCE"))
    return Outcome(status, json.dumps(status, indent=2, sort_keys=True))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {text(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return text(value)
    return value
