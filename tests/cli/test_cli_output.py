"""Output formatting and the pure parts of status, bench, load, the launcher and the REPL."""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import pytest

from twistkv.cli import _bench, _cluster, _load, _repl, _status
from twistkv.cli._client import Address, parse_info
from twistkv.cli._errors import UsageError
from twistkv.cli._main import emit
from twistkv.cli._output import Outcome, format_ms, format_reply, format_seconds, jsonable, table
from twistkv.cli._progress import ProgressBar, render_bar


def test_table_aligns_columns() -> None:
    """Every column is as wide as its widest cell; right-aligned columns line up at the end."""
    text = table(["ID", "STATE", "KEYS"], [["n1", "ALIVE", 5], ["node-22", "DEAD", 1234]],
                 right=[2])
    assert text.splitlines() == [
        "ID       STATE  KEYS",
        "n1       ALIVE     5",
        "node-22  DEAD   1234",
    ]
    assert table(["A"], [[None]]).splitlines()[1] == "-"


def test_format_reply_like_redis_cli() -> None:
    """Replies render as redis-cli shows them: quoted strings, (integer), (nil), numbered lists."""
    assert format_reply(None) == "(nil)"
    assert format_reply(3) == "(integer) 3"
    assert format_reply(True) == "(true)"
    assert format_reply(b"v") == '"v"'
    assert format_reply([b"a", 1, None]) == '1) "a"\n2) (integer) 1\n3) (nil)'
    assert format_reply([]) == "(empty array)"
    assert format_reply({b"id": b"n1"}) == '1# "id" => "n1"'
    assert format_reply(b"# Server\r\nnode_id:n1\r\n") == "# Server\nnode_id:n1"
    assert format_reply(b"\xff") == '"\\\\xff"'


def test_parse_info() -> None:
    """INFO text becomes a flat dict with numbers converted."""
    body = "# Server\r\nnode_id:n1\r\nuptime_in_seconds:12\r\n\r\n# Stats\r\nops:1.5\r\n"
    assert parse_info(body) == {"node_id": "n1", "uptime_in_seconds": 12, "ops": 1.5}


def test_jsonable_and_durations() -> None:
    """Bytes become text in JSON; durations and latencies read naturally."""
    assert jsonable({b"k": [b"v", {1, 2} and [1], math.inf]}) == {"k": ["v", [1], None]}
    assert [format_seconds(s) for s in (0.25, 4.2, 185, 7800, None)] == [
        "250ms", "4.2s", "3m05s", "2h10m", "-"]
    assert [format_ms(s) for s in (0.000123, 0.0023, 0.5, None)] == [
        "0.123 ms", "2.3 ms", "500 ms", "-"]


def test_emit_writes_raw_values_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    """A value is written as its bytes; --json prints the data; the notice goes to stderr."""
    assert emit(Outcome({"k": 1}, b"caf\xc3\xa9\n"), as_json=False) == 0
    assert capsys.readouterr().out == "café\n"
    assert emit(Outcome({"found": False}, b"", code=1, stderr="key 'x' not found"), True) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"found": False}
    assert captured.err == "twistkv: key 'x' not found\n"


METRICS = """\
# TYPE twistkv_command_latency_seconds histogram
twistkv_command_latency_seconds_bucket{command="GET",le="0.001"} 8.0
twistkv_command_latency_seconds_bucket{command="GET",le="0.01"} 10.0
twistkv_command_latency_seconds_bucket{command="GET",le="+Inf"} 10.0
twistkv_command_latency_seconds_count{command="GET"} 10.0
twistkv_command_latency_seconds_sum{command="GET"} 0.02
twistkv_command_latency_seconds_bucket{command="INFO",le="0.001"} 0.0
twistkv_command_latency_seconds_bucket{command="INFO",le="+Inf"} 5.0
twistkv_command_latency_seconds_count{command="INFO"} 5.0
twistkv_command_latency_seconds_sum{command="INFO"} 50.0
"""


def test_parse_metrics_ignores_admin_commands() -> None:
    """Average and quantiles come from data commands only (INFO's 50 s is left out)."""
    hist = _status.parse_metrics(METRICS)
    assert hist.count == 10 and hist.mean == pytest.approx(0.002)
    assert hist.quantile(0.5) == 0.001 and hist.quantile(0.99) == 0.01


def _member(node: str, state: str, since: float, me: bool = False) -> dict[str, object]:
    return {"id": node, "state": state, "since_s": since, "self": me, "in_ring": True,
            "client": f"127.0.0.1:700{node[-1]}", "address": f"127.0.0.1:710{node[-1]}",
            "http": f"127.0.0.1:800{node[-1]}", "incarnation": 0}


def test_status_screen_matches_seed_003() -> None:
    """Health line, Nodes section with state and last seen, Metrics with requests and latency."""
    members = [_member("n1", "alive", 60, me=True), _member("n2", "alive", 50),
               _member("n3", "dead", 30)]
    own = {"node_id": "n1", "cluster_name": "twistkv", "mode": "cluster", "replicas": 3,
           "read_quorum": 2, "write_quorum": 2}
    reports = {
        "n1": _status.NodeReport(info={"total_commands_processed": 1000,
                                       "instantaneous_ops_per_sec": 10.0},
                                 latency=_status.parse_metrics(METRICS)),
        "n2": _status.NodeReport(info={"total_commands_processed": 543,
                                       "instantaneous_ops_per_sec": 2.5}),
    }
    now = 1_705_314_645.0  # 2024-01-15T10:30:45Z
    data = _status.build_status(members, own, reports, now, "127.0.0.1:7001")
    text = _status.render_status(data)
    assert "=== Cluster Status ===" in text
    assert "Health: 3 total nodes, 2 alive, 1 dead (66.7% availability)" in text
    assert "=== Nodes ===" in text and "=== Metrics ===" in text
    n3 = next(line for line in text.splitlines() if line.strip().startswith("n3"))
    assert "DEAD" in n3 and "2024-01-15T10:30:15Z" in n3  # last seen: dead for 30 s
    n1 = next(line for line in text.splitlines() if line.strip().startswith("n1 *"))
    assert "ALIVE" in n1 and "2024-01-15T10:30:45Z" in n1
    assert "Total requests: 1543" in text
    assert "Ops per sec: 12.5" in text
    assert "Average latency: 2.0 ms" in text
    assert data["health"] == {"total": 3, "alive": 2, "suspect": 0, "dead": 1, "left": 0,
                              "availability": pytest.approx(2 / 3)}
    json.dumps(data)  # JSON-ready


def test_percentiles_and_histogram() -> None:
    """Nearest-rank percentiles; the histogram covers just the occupied buckets."""
    values = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    summary = _bench.summarize(values)
    assert summary["p50"] == 0.05 and summary["p90"] == 0.09 and summary["p99"] == 0.099
    assert summary["max"] == 0.1 and summary["count"] == 100
    hist = _bench.histogram(values)
    assert sum(c for _, c in hist) == 100
    assert hist[0][0] == pytest.approx(0.001) and hist[-1][0] == pytest.approx(0.1)
    assert _bench.histogram([]) == [] and _bench.percentile([], 0.5) is None


def test_progress_bar_only_on_a_terminal() -> None:
    """Nothing is drawn into a pipe; a forced bar shows the fraction."""
    pipe = io.StringIO()
    bar = ProgressBar(10, "x", stream=pipe)
    bar.update(5, force=True)
    bar.close()
    assert pipe.getvalue() == ""
    shown = io.StringIO()
    bar = ProgressBar(10, "load", stream=shown, enabled=True)
    bar.update(5, force=True)
    assert " 50.0% 5/10" in shown.getvalue()
    assert render_bar(0.5, 10) == "[#####.....]"


def _records(body: bytes, fmt: str) -> list[tuple[bytes, bytes]]:
    return list(_load.records(_load._Counted(io.BytesIO(body)), fmt, "f"))


def test_load_parses_jsonl_and_csv() -> None:
    """JSON lines (non-string values as JSON text, # comments) and CSV with header and quotes."""
    jsonl = b'{"key": "a", "value": "1"}\n\n# note\n{"key": "b", "value": {"x": [1]}}\n'
    assert _records(jsonl, "jsonl") == [(b"a", b"1"), (b"b", b'{"x":[1]}')]
    csv_body = b'key,value\r\nk1,"a, b"\nk2,\n'
    assert _records(csv_body, "csv") == [(b"k1", b"a, b"), (b"k2", b"")]
    assert _load.detect_format("seed.csv", "{") == "csv"
    assert _load.detect_format("seed", "{") == "jsonl"
    assert _load.detect_format("-", "k") == "csv"


@pytest.mark.parametrize("body, fmt, where", [
    (b'{"key": "a"}\n', "jsonl", "f:1"),
    (b'{"key": "a", "value": 1}\nnot json\n', "jsonl", "f:2"),
    (b'[1, 2]\n', "jsonl", "f:1"),
    (b"k1,v1\nk2,v2,extra\n", "csv", "f:2"),
])
def test_load_names_the_bad_line(body: bytes, fmt: str, where: str) -> None:
    """A malformed record is a usage error that names the file and line."""
    with pytest.raises(UsageError, match=where):
        _records(body, fmt)


def test_cluster_plan_ports_and_seeds(tmp_path: Path) -> None:
    """n1..nN on client/peer/http ports base.., base+100.., base+1000..; n2.. seeded from n1."""
    state = _cluster.plan(tmp_path, 3, base_port=7001, storage="memory")
    assert [(n.id, n.client_port, n.peer_port, n.http_port) for n in state.nodes] == [
        ("n1", 7001, 7101, 8001), ("n2", 7002, 7102, 8002), ("n3", 7003, 7103, 8003)]
    n1, n2 = state.nodes[0].argv, state.nodes[1].argv
    assert "--seeds" not in n1
    assert n2[n2.index("--seeds") + 1] == "127.0.0.1:7101"
    assert n2[n2.index("--data-dir") + 1] == "data/n2"
    assert n2[n2.index("--storage") + 1] == "memory"
    at = n1.index("kvnode")
    assert n1[at - 2:at + 1] == ["-n", "--pidfile=", "kvnode"]
    state.save()
    again = _cluster.load_state(tmp_path)
    assert [n.argv for n in again.nodes] == [n.argv for n in state.nodes]
    with pytest.raises(UsageError):
        _cluster.load_state(tmp_path / "elsewhere")
    with pytest.raises(UsageError):
        _cluster.plan(tmp_path, 0)


def test_pid_alive_checks_identity() -> None:
    """A live pid that is not that kvnode (this test process) does not count as the node."""
    assert not _cluster.pid_alive(os.getpid(), "n1")
    assert not _cluster.pid_alive(None)
    assert not _cluster.pid_alive(2**22 + 12345, "n1")


def test_repl_offline_commands() -> None:
    """help, exit, bad quoting and usage errors work without a node; completion of names."""
    out = io.StringIO()
    repl = _repl.Repl(Address("127.0.0.1", 1), out=out)
    repl._server_commands = ["get", "set", "versions"]  # as if COMMAND had answered
    assert repl.execute("help") is True
    assert "join <addr>" in out.getvalue() and "query <addr> <key>" in out.getvalue()
    assert repl.execute('put "unclosed') is True
    assert "(error) cannot split" in out.getvalue()
    assert repl.execute("query onlyone") is True
    assert "usage: query" in out.getvalue()
    assert repl.execute("exit") is False and repl.execute("QUIT") is False
    assert repl.completions("ver", "ver") == ["versions "]
    assert repl.completions("VER", "VER") == ["VERSIONS "]
    assert "members " in repl.completions("mem", "mem")
    assert repl.completions("consistency q", "q") == ["quorum "]
