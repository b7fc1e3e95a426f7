"""The CLI against a live 3-node cluster (real twistd processes from the integration harness).

Data commands run in-process through C{main} (fast, captured with capsys); the REPL and
C{python -m twistkv.cli} run as real processes, through a pipe and through a pty.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from clihelpers import REPO_ROOT, Result, node_env, run_subprocess
from integration.conftest import HOST, Node

pytestmark = pytest.mark.integration

Cli = Callable[..., Result]


def server(node: Node) -> str:
    return f"{HOST}:{node.client_port}"


def test_put_get_delete_batch(cli: Cli, cluster3: list[Node]) -> None:
    """put/get/delete/batch round-trip through different nodes, human and JSON output."""
    n1, n2, n3 = (server(n) for n in cluster3)
    assert cli("-s", n1, "put", "live:greeting", "hello world") == Result(0, "OK\n", "")
    assert cli("-s", n2, "get", "live:greeting") == Result(0, "hello world\n", "")
    got = cli("-s", n3, "get", "live:greeting", "--json", "--consistency", "all")
    assert got.code == 0
    assert json.loads(got.out) == {"key": "live:greeting", "found": True, "value": "hello world"}

    assert cli("-s", n1, "batch", "live:a", "1", "live:b", "2").out == "OK (2 keys written)\n"
    assert cli("-s", n3, "get", "live:b").out == "2\n"
    deleted = cli("-s", n2, "delete", "live:a", "live:b", "live:none")
    assert deleted == Result(0, "deleted 2 of 3 keys\n", "")
    as_json = cli("-s", n2, "--json", "del", "live:greeting")
    assert json.loads(as_json.out)["deleted"] == 1


def test_get_missing_key_exits_1(cli: Cli, cluster3: list[Node]) -> None:
    """A missing key: exit 1, nothing on stdout, one line on stderr; JSON says found=false."""
    result = cli("-s", server(cluster3[0]), "get", "live:missing")
    assert result == Result(1, "", "twistkv: key 'live:missing' not found\n")
    as_json = cli("-s", server(cluster3[0]), "get", "live:missing", "--json")
    assert as_json.code == 1
    assert json.loads(as_json.out) == {"key": "live:missing", "found": False, "value": None}


def test_binary_safe_values(cli: Cli, cluster3: list[Node]) -> None:
    """Values with spaces, newlines and non-ASCII text come back byte for byte."""
    value = "zeile 1\nzeile 2 — ✓"
    assert cli("-s", server(cluster3[0]), "put", "live:text", value).code == 0
    assert cli("-s", server(cluster3[1]), "get", "live:text").out == value + "\n"


def test_members_ring_where(cli: Cli, cluster3: list[Node]) -> None:
    """members/ring/where list all three nodes, as aligned tables and as JSON."""
    s = server(cluster3[0])
    members = cli("-s", s, "members")
    assert members.code == 0
    lines = members.out.splitlines()
    assert lines[0].split() == ["ID", "STATE", "CLIENT", "PEER", "HTTP", "RING", "FOR", "INC"]
    assert [line.split()[0] for line in lines[1:4]] == ["n1", "n2", "n3"]
    assert lines[1].split()[1] == "*" and all("ALIVE" in line for line in lines[1:4])
    # aligned: the STATE column starts at the same offset on every row
    assert len({line.index("ALIVE") for line in lines[1:4]}) == 1
    rows = json.loads(cli("-s", s, "members", "--json").out)
    assert {r["id"]: r["state"] for r in rows} == {"n1": "alive", "n2": "alive", "n3": "alive"}
    assert rows[1]["client"] == server(cluster3[1])

    ring = json.loads(cli("-s", s, "ring", "--json").out)
    assert sorted(r["id"] for r in ring) == ["n1", "n2", "n3"]
    assert sum(r["primary_share"] for r in ring) == pytest.approx(1.0, abs=0.01)
    ring_text = cli("-s", s, "ring").out
    assert ring_text.splitlines()[0].split() == ["ID", "STATE", "VNODES", "PRIMARY", "REPLICA",
                                                 "KEYS"]

    where = json.loads(cli("-s", s, "where", "live:k", "--json").out)
    replicas = [r for r in where["nodes"] if r["role"] == "replica"]
    assert sorted(r["node"] for r in replicas) == ["n1", "n2", "n3"]
    assert all(r["client"] for r in replicas)
    where_text = cli("-s", s, "where", "live:k").out
    assert where_text.startswith("key 'live:k': 3 replicas")


def test_status(cli: Cli, cluster3: list[Node]) -> None:
    """status: seed 003's health line, each node alive with last seen, requests from INFO."""
    s = server(cluster3[1])
    cli("-s", s, "put", "live:status", "x")
    result = cli("-s", s, "status")
    assert result.code == 0, result
    text = result.out
    assert "Health: 3 total nodes, 3 alive, 0 dead (100.0% availability)" in text
    assert "=== Nodes ===" in text and "=== Metrics ===" in text
    for node in cluster3:
        assert server(node) in text
    assert "Total requests: " in text and "(from 3 of 3 live nodes)" in text
    assert "Average latency: " in text and "ms" in text
    data = json.loads(cli("-s", s, "status", "--json").out)
    assert data["health"]["alive"] == 3 and data["metrics"]["total_requests"] > 0
    assert data["metrics"]["avg_latency_ms"] > 0
    assert [n["id"] for n in data["nodes"]] == ["n1", "n2", "n3"]


def test_bench_reports_throughput_and_latency(cli: Cli, cluster3: list[Node]) -> None:
    """bench runs its ops over 2 clients on every node and reports p50 <= p90 <= p99 <= max."""
    result = cli("-s", server(cluster3[0]), "bench", "--ops", "200", "--clients", "2",
                 "--keys", "20", "--spread", "--consistency", "quorum", "--seed", "1", "--json")
    assert result.code == 0, result
    assert result.err == ""  # no progress bar into a pipe
    data = json.loads(result.out)
    assert data["ops"] == 200 and data["errors_total"] == 0
    assert len(data["config"]["servers"]) == 3
    lat = data["latency"]["all"]
    assert lat["count"] == 200
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert sum(c for _, c in data["histogram"]) == 200
    text = cli("-s", server(cluster3[0]), "bench", "--ops", "50", "--clients", "2").out
    assert "throughput" in text and "latency histogram" in text and "P99" in text


def test_load_jsonl_and_csv(cli: Cli, cluster3: list[Node], tmp_path: Path) -> None:
    """load writes every record of a JSONL and a CSV file; the values read back."""
    jsonl = tmp_path / "seed.jsonl"
    jsonl.write_text("".join(json.dumps({"key": f"seed:{i}", "value": f"v{i}"}) + "\n"
                             for i in range(250)) + '{"key": "seed:obj", "value": {"a": 1}}\n')
    result = cli("-s", server(cluster3[0]), "load", str(jsonl), "--batch", "100")
    assert result.code == 0, result
    assert result.out.startswith("loaded 251 keys from ") and result.err == ""
    assert cli("-s", server(cluster3[2]), "get", "seed:249").out == "v249\n"
    assert cli("-s", server(cluster3[2]), "get", "seed:obj").out == '{"a":1}\n'
    csv_file = tmp_path / "seed.csv"
    csv_file.write_text('key,value\nseed:c1,"x, y"\n')
    assert json.loads(cli("-s", server(cluster3[1]), "load", str(csv_file), "--json").out)[
        "loaded"] == 1
    assert cli("-s", server(cluster3[0]), "get", "seed:c1").out == "x, y\n"


def test_repl_through_a_pipe(cluster3: list[Node]) -> None:
    """Without a tty the REPL reads lines and prints only answers: builtins, data, raw RESP."""
    script = "\n".join([
        'put repl:k "two words"',
        "get repl:k",
        "get repl:nope",
        "INCR repl:n",
        "query n3 repl:k",
        f"query {server(cluster3[1])} repl:k",
        "members",
        "where repl:k",
        "consistency all",
        "get repl:k",
        "exit",
        "get repl:never",
    ]) + "\n"
    result = run_subprocess("repl", "--server", server(cluster3[0]), stdin=script)
    assert result.code == 0, result
    out = result.out
    assert "twistkv " not in out.split("\n", 1)[0]  # no prompt, no banner
    lines = out.splitlines()
    assert lines[:4] == ["OK", "two words", "(nil)", "(integer) 1"]
    assert lines[4] == 'n3 at ' + server(cluster3[2]) + ': "two words"'
    assert lines[5] == 'n2 at ' + server(cluster3[1]) + ': "two words"'
    assert "3 members (3 alive)" in out
    assert "key 'repl:k': 3 replicas" in out
    assert lines[-1] == "two words"  # after `consistency all`; nothing after exit
    assert "repl:never" not in out


def test_repl_errors_do_not_stop_it(cluster3: list[Node]) -> None:
    """A server error is shown as (error) and the REPL goes on; the exit code is the last error."""
    result = run_subprocess("repl", "-s", server(cluster3[0]),
                            stdin="NOSUCHCOMMAND\nput repl:after ok\n")
    lines = result.out.splitlines()
    assert lines[0].startswith("(error) ") and "unknown command" in lines[0]
    assert lines[1] == "OK"
    assert result.code == 5


def _read_until(fd: int, token: bytes, timeout: float = 15.0) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while token not in buf and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    return buf


def test_repl_on_a_terminal(cluster3: list[Node], tmp_path: Path) -> None:
    """On a pty: banner and prompt, tab completion of command names, history file written."""
    master, slave = os.openpty()
    env = node_env(HOME=str(tmp_path), TERM="dumb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "twistkv.cli", "repl", "--server", server(cluster3[0])],
        stdin=slave, stdout=slave, stderr=slave, env=env, cwd=REPO_ROOT,
        start_new_session=True,
    )
    os.close(slave)
    prompt = f"twistkv {server(cluster3[0])}> ".encode()
    try:
        greeting = _read_until(master, prompt)
        assert b"Type 'help'" in greeting and prompt in greeting, greeting
        os.write(master, b"put tty:k v1\n")
        assert b"OK" in _read_until(master, prompt)
        os.write(master, b"memb\t\n")  # completes to `members `
        listing = _read_until(master, prompt)
        assert b"members" in listing and b"3 members (3 alive)" in listing, listing
        os.write(master, b"exit\n")
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    history = (tmp_path / ".twistkv_history").read_text().splitlines()
    assert history[-3:] == ["put tty:k v1", "members ", "exit"]


def test_main_module_exit_codes(cluster3: list[Node]) -> None:
    """`python -m twistkv.cli` exits with main()'s codes: 0 found, 1 missing."""
    assert run_subprocess("-s", server(cluster3[0]), "put", "proc:k", "v").code == 0
    found = run_subprocess("-s", server(cluster3[1]), "get", "proc:k")
    assert (found.code, found.out) == (0, "v\n")
    missing = run_subprocess("-s", server(cluster3[1]), "get", "proc:missing")
    assert (missing.code, missing.out) == (1, "")


def test_join_refuses_a_node_already_in_a_cluster(cluster3: list[Node]) -> None:
    """`twistkv join` sends JOIN; a node already in a cluster refuses it with the reason (exit 5)."""
    result = run_subprocess("join", "127.0.0.1:9", "--server", server(cluster3[0]))
    assert result.code == 5, result
    assert "already part of a cluster" in result.err
