"""The C{twistkv} command line: argument parsing and dispatch to the command modules.

Global options (C{--server}, C{--consistency}, C{--timeout}, C{--json}) may come before
or after the subcommand. Exit codes are in L{twistkv.cli._errors}; every error is one
line on stderr (C{TWISTKV_DEBUG=1} adds the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from twistkv import __version__
from twistkv.cli._client import CONSISTENCY_LEVELS, connect, default_server, parse_address
from twistkv.cli._errors import EXIT_SERVER, EXIT_USAGE, CLIError, UsageError
from twistkv.cli._output import Outcome, dumps

__all__ = ["main", "build_parser", "emit", "GLOBAL_DEFAULTS"]

#: Values of the global options when given nowhere (C{server} is resolved at run time).
GLOBAL_DEFAULTS: dict[str, Any] = {
    "server": None, "consistency": None, "timeout": 5.0, "json": False,
}

EPILOG = """\
exit codes: 0 ok, 1 key not found (get), 2 usage error, 3 server unreachable,
            4 UNAVAILABLE (quorum not reached), 5 other server error
environment: TWISTKV_SERVER is the default --server (else 127.0.0.1:7379)
docs: docs/cli.md"""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are L{UsageError}s (one line, exit 2), not exit()."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def _level(text: str) -> str:
    level = text.lower()
    if level not in CONSISTENCY_LEVELS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not one of {', '.join(CONSISTENCY_LEVELS)}")
    return level


def global_options() -> _Parser:
    """The options every subcommand accepts; SUPPRESS keeps a later default from hiding an
    earlier value (C{twistkv --json get k} and C{twistkv get k --json} both work)."""
    common = _Parser(add_help=False)
    g = common.add_argument_group("connection and output")
    g.add_argument("-s", "--server", metavar="HOST:PORT", default=argparse.SUPPRESS,
                   help="node to talk to [default: $TWISTKV_SERVER or 127.0.0.1:7379]")
    g.add_argument("-c", "--consistency", type=_level, metavar="{one,quorum,all}",
                   default=argparse.SUPPRESS,
                   help="replicas each read/write waits for [default: the node's R and W]")
    g.add_argument("-t", "--timeout", type=_positive_float, metavar="SECONDS",
                   default=argparse.SUPPRESS, help="connect and reply timeout [default: 5]")
    g.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print JSON instead of tables")
    return common


def build_parser() -> argparse.ArgumentParser:
    """The full parser (also used by the docs and the tests)."""
    from twistkv.cli import _bench, _cluster, _k8s, _load, _repl

    common = global_options()
    parser = _Parser(
        prog="twistkv",
        description="Operate a twistkv cluster: read and write keys, inspect members and "
                    "the ring, run a local cluster, benchmark, load data.",
        parents=[common],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"twistkv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def add(name: str, help_text: str, **kwargs: Any) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(
            name, help=help_text, description=help_text, parents=[common], **kwargs)
        return p

    p = add("put", "store a value: SET KEY VALUE")
    p.add_argument("key", metavar="KEY")
    p.add_argument("value", metavar="VALUE")
    p.add_argument("--ttl", type=_positive_float, metavar="SECONDS",
                   help="expire the key after this many seconds")
    p = add("get", "print a key's value (exit 1 if it does not exist)")
    p.add_argument("key", metavar="KEY")
    p = add("delete", "delete keys; prints how many existed", aliases=["del"])
    p.add_argument("keys", metavar="KEY", nargs="+")
    p = add("batch", "store several values: batch k1 v1 k2 v2 ... (MSET)")
    p.add_argument("pairs", metavar="KEY VALUE", nargs="+")
    add("status", "cluster health, nodes and metrics")
    add("members", "cluster members and their states (MEMBERS)")
    add("ring", "vnodes, ownership and key counts per node (RING)")
    p = add("where", "which nodes hold a key (WHERE)")
    p.add_argument("key", metavar="KEY")
    add("leave", "the --server node hands its data over, leaves the cluster and stops (LEAVE)")
    p = add("remove", "re-replicate a dead node's data and remove it from the ring (REMOVE)")
    p.add_argument("node_id", metavar="NODE_ID")
    p = add("join", "the lone, empty --server node joins the cluster of PEER (JOIN)")
    p.add_argument("peer", metavar="PEER", help="a member's peer address, host:port")
    add("repair", "compare Merkle trees with every live peer now and repair (REPAIR)")
    add("rebalance", "ring status and range movements in progress (REBALANCE)")
    _repl.add_parser(add)
    _cluster.add_parser(add, _Parser, common)
    _bench.add_parser(add, _positive_float)
    _load.add_parser(add)
    _k8s.add_parser(add)
    return parser


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse C{argv}; fill in the global defaults; raise L{UsageError} on bad input."""
    ns = build_parser().parse_args(list(argv))
    for name, value in GLOBAL_DEFAULTS.items():
        if not hasattr(ns, name):
            setattr(ns, name, value)
    if ns.server is None:
        ns.server = default_server()
    return ns


def emit(outcome: Outcome, as_json: bool) -> int:
    """Print an outcome to stdout (and its notice to stderr); return its exit code."""
    if as_json:
        print(dumps(outcome.data))
    elif isinstance(outcome.text, bytes):
        if outcome.text:
            sys.stdout.flush()
            buffer = getattr(sys.stdout, "buffer", None)
            if buffer is not None:
                buffer.write(outcome.text)
                buffer.flush()
            else:
                sys.stdout.write(outcome.text.decode("utf-8", errors="backslashreplace"))
    elif outcome.text:
        print(outcome.text)
    if outcome.stderr:
        print(f"twistkv: {outcome.stderr}", file=sys.stderr)
    sys.stdout.flush()
    return outcome.code


def _data_command(ns: argparse.Namespace) -> Outcome:
    from twistkv.cli import _data, _status

    address = parse_address(ns.server)
    client = connect(address, timeout=ns.timeout, consistency=ns.consistency)
    try:
        calls: dict[str, Callable[[], Outcome]] = {
            "put": lambda: _data.put(client, address, ns.key, ns.value, ns.ttl),
            "get": lambda: _data.get(client, address, ns.key),
            "delete": lambda: _data.delete(client, address, ns.keys),
            "del": lambda: _data.delete(client, address, ns.keys),
            "batch": lambda: _data.batch(client, address, ns.pairs),
            "status": lambda: _status.status(client, address, timeout=ns.timeout),
            "members": lambda: _data.members(client, address),
            "ring": lambda: _data.ring(client, address),
            "where": lambda: _data.where(client, address, ns.key),
            "leave": lambda: _data.leave(client, address),
            "remove": lambda: _data.remove(client, address, ns.node_id),
            "join": lambda: _data.join(client, address, ns.peer),
            "repair": lambda: _data.repair(client, address),
            "rebalance": lambda: _data.rebalance(client, address),
        }
        return calls[ns.command]()
    finally:
        client.close()


def run(ns: argparse.Namespace) -> int:
    """Run a parsed command; return the exit code (errors raise L{CLIError})."""
    handler = getattr(ns, "handler", None)
    if handler is not None:
        result = handler(ns)
        if isinstance(result, Outcome):
            return emit(result, ns.json)
        return int(result)
    return emit(_data_command(ns), ns.json)


def main(argv: Sequence[str] | None = None) -> int:
    """The C{twistkv} entry point: run C{argv} (default C{sys.argv[1:]}), return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        ns = parse(args)
        if ns.command is None:
            build_parser().print_help()
            return EXIT_USAGE
        return run(ns)
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USAGE)
    except CLIError as exc:
        print(f"twistkv: {exc.message}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("twistkv: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `twistkv members | head -1`
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the exit-time flush
        except OSError:
            pass
        return 0
    except Exception as exc:  # noqa: BLE001 - a bug, but still one line
        if os.environ.get("TWISTKV_DEBUG"):
            traceback.print_exc()
        first = (str(exc).splitlines() or [""])[0]
        print(f"twistkv: internal error: {type(exc).__name__}: {first} "
              "(set TWISTKV_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_SERVER
