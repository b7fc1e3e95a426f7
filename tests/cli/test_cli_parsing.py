"""Argument parsing, usage errors and exit codes of `twistkv`, with no node running."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from clihelpers import Result

from twistkv.cli._client import Address, default_server, parse_address, translate
from twistkv.cli._errors import EXIT_SERVER, EXIT_UNAVAILABLE, EXIT_UNREACHABLE, UsageError
from twistkv.cli._main import parse

Cli = Callable[..., Result]


def test_global_options_before_or_after_the_command() -> None:
    """--server/--json/--consistency/--timeout work on either side of the subcommand."""
    before = parse(["--server", "h:1", "--json", "-c", "ALL", "-t", "2", "get", "k"])
    after = parse(["get", "k", "--server", "h:1", "--json", "-c", "all", "-t", "2"])
    for ns in (before, after):
        assert (ns.command, ns.key, ns.server, ns.json, ns.consistency, ns.timeout) == (
            "get", "k", "h:1", True, "all", 2.0)


def test_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No --server: $TWISTKV_SERVER, else 127.0.0.1:7379; consistency is the node's default."""
    monkeypatch.delenv("TWISTKV_SERVER", raising=False)
    ns = parse(["members"])
    assert (ns.server, ns.consistency, ns.timeout, ns.json) == ("127.0.0.1:7379", None, 5.0, False)
    monkeypatch.setenv("TWISTKV_SERVER", "10.0.0.5:7001")
    assert parse(["members"]).server == "10.0.0.5:7001" == default_server()
    assert parse(["-s", "x:2", "members"]).server == "x:2"


@pytest.mark.parametrize("argv", [
    ["get"],                                   # missing KEY
    ["put", "k"],                              # missing VALUE
    ["frobnicate"],                            # unknown command
    ["get", "k", "--consistency", "most"],     # bad level
    ["get", "k", "--timeout", "-1"],           # bad timeout
    ["batch"],                                 # no pairs
    ["batch", "k1", "v1", "k2"],               # odd pairs
    ["get", "k", "--server", "nonsense"],      # no port
    ["cluster"],                               # no action
    ["cluster", "kill"],                       # no node
    ["bench", "--ratio", "2"],
    ["bench", "--clients", "0"],
    ["load", "/nonexistent/file.jsonl"],
])
def test_usage_errors_exit_2_with_one_line(cli: Cli, argv: list[str]) -> None:
    """Bad input exits 2 with exactly one line on stderr and no traceback, before any I/O."""
    result = cli(*argv)
    assert result.code == 2, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("twistkv: "), result.err
    assert "Traceback" not in result.err
    assert result.out == ""


def test_help_and_version_exit_0(cli: Cli) -> None:
    """--help lists every command and the exit codes; --version names the version."""
    result = cli("--help")
    assert result.code == 0
    for word in ("put", "get", "delete", "batch", "status", "members", "ring", "where",
                 "repl", "cluster", "bench", "load", "exit codes"):
        assert word in result.out
    assert cli("cluster", "up", "--help").code == 0
    version = cli("--version")
    assert version.code == 0 and version.out.startswith("twistkv ")


def test_no_command_prints_help_and_exits_2(cli: Cli) -> None:
    """Plain `twistkv` shows the help (a usage error: nothing was asked)."""
    result = cli()
    assert result.code == 2 and "usage: twistkv" in result.out


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:7001", Address("127.0.0.1", 7001)),
    ("localhost:1", Address("localhost", 1)),
    (":7002", Address("127.0.0.1", 7002)),
    ("7003", Address("127.0.0.1", 7003)),
    ("[::1]:7004", Address("::1", 7004)),
    ("redis://db:6379/", Address("db", 6379)),
])
def test_parse_address(text: str, expected: Address) -> None:
    """host:port, :port, a bare port, [v6]:port and redis:// URLs are accepted."""
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["", "host", "host:", "host:99999", "a:b:c", "[::1]"])
def test_parse_address_rejects(text: str) -> None:
    """Anything else is a usage error."""
    with pytest.raises(UsageError):
        parse_address(text)


def test_error_translation() -> None:
    """redis-py errors map to exit codes: refused/timeout 3, UNAVAILABLE 4, other 5."""
    import redis

    where = Address("127.0.0.1", 7001)
    assert translate(redis.ConnectionError("Connection refused"), where).code == EXIT_UNREACHABLE
    assert translate(redis.TimeoutError("Timeout reading"), where).code == EXIT_UNREACHABLE
    unavailable = translate(redis.ResponseError("UNAVAILABLE write reached 1 of 2"), where)
    assert unavailable.code == EXIT_UNAVAILABLE
    assert unavailable.message == "127.0.0.1:7001: UNAVAILABLE write reached 1 of 2"
    assert translate(redis.ResponseError("ERR wrong type"), where).code == EXIT_SERVER


def test_unreachable_server_exits_3(cli: Cli) -> None:
    """Nothing listening: exit 3 at once (no redis-py retries), one line naming the address."""
    import socket

    with socket.socket() as sock:  # a port that refuses: bound but not listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        for argv in (["get", "k"], ["status"], ["members", "--json"], ["bench", "--ops", "5"]):
            result = cli("--server", f"127.0.0.1:{port}", *argv)
            assert result.code == 3, (argv, result)
            assert result.err.count("\n") == 1 and f"127.0.0.1:{port}" in result.err
            assert "refused" in result.err


@pytest.mark.parametrize(
    ("argv", "command", "field", "value"),
    [
        (["leave"], "leave", None, None),
        (["remove", "n3"], "remove", "node_id", "n3"),
        (["join", "10.0.0.5:7380"], "join", "peer", "10.0.0.5:7380"),
        (["repair"], "repair", None, None),
        (["rebalance"], "rebalance", None, None),
    ],
)
def test_cluster_admin_commands_parse(
    argv: list[str], command: str, field: str | None, value: str | None
) -> None:
    """leave/remove/join/repair/rebalance parse with their arguments and the global options."""
    ns = parse(["--server", "127.0.0.1:7001", *argv])
    assert ns.command == command
    assert ns.server == "127.0.0.1:7001"
    if field is not None:
        assert getattr(ns, field) == value
