"""C{twistkv repl}: an interactive shell on one node (seed 001's REPL, plus every data command).

On a terminal it has a prompt, readline editing, history in C{~/.twistkv_history} and tab
completion of command names. Without a terminal (a pipe, a file, a test) it reads one
command per line and prints only the answers, so it scripts well:

    printf 'put a 1\\nget a\\n' | twistkv repl --server 127.0.0.1:7001

A line is split like a shell line (C{"double quotes"} for spaces). The first word picks
a REPL command (see L{HELP}); anything else goes to the node as a raw Redis command and
the reply is shown the way redis-cli shows it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import redis

from twistkv.cli import _data, _status
from twistkv.cli._client import (
    CONSISTENCY_LEVELS,
    Address,
    command,
    connect,
    errors_mapped,
    parse_address,
    text,
    translate,
)
from twistkv.cli._errors import EXIT_NOT_FOUND, CLIError, UsageError
from twistkv.cli._output import Outcome, dumps, format_reply

__all__ = ["Repl", "add_parser", "run", "HELP", "BUILTINS"]

HELP = """\
REPL commands (seed 001):
  join <addr>             join the cluster through a peer (how twistkv does it: explained)
  leave                   this node hands its ranges over, leaves the cluster and stops
  query <addr> <key>      GET a key through one specific node (client host:port, peer
                          address or node id)
  help                    this text ('help server' shows the node's own HELP)
  exit                    leave the REPL (also: quit, Ctrl-D)

Data and cluster commands (as on the command line):
  put <key> <value>       get <key>              delete <key> [key ...]
  batch <k1> <v1> ...     status                 members
  ring                    where <key>
  connect <addr>          talk to another node from now on
  consistency one|quorum|all|default
                          replicas each later read/write waits for (kept across reconnects)

Anything else is sent to the node as a raw command, e.g. SET k v EX 10, INCR n,
VERSIONS k, INFO cluster, CONSISTENCY. Quote arguments with spaces: put k "a b"."""

#: The REPL's own words (completed with the node's command names).
BUILTINS = (
    "join", "leave", "query", "help", "exit", "quit", "put", "get", "delete", "del",
    "batch", "status", "members", "ring", "where", "connect", "consistency",
)

HISTORY_FILE = "~/.twistkv_history"
HISTORY_LENGTH = 1000


def add_parser(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("repl", "interactive shell: data commands, raw Redis commands, join/leave/query")
    p.add_argument("--history-file", metavar="PATH", default=None,
                   help=f"readline history [default: {HISTORY_FILE}]")
    p.add_argument("--no-history", action="store_true", help="do not read or write history")
    p.set_defaults(handler=run)


def _raw_client(address: Address, timeout: float, consistency: str | None) -> redis.Redis:
    """A client whose replies are not reshaped by redis-py's per-command callbacks."""
    client = connect(address, timeout=timeout, consistency=consistency)
    client.response_callbacks = type(client.response_callbacks)({})
    return client


class Repl:
    """The shell's state (server, consistency, clients) and its command table."""

    def __init__(
        self,
        server: Address,
        *,
        timeout: float = 5.0,
        consistency: str | None = None,
        as_json: bool = False,
        out: IO[str] | None = None,
    ) -> None:
        self.server = server
        self.timeout = timeout
        self.consistency = consistency
        self.as_json = as_json
        self.out = out if out is not None else sys.stdout
        self.last_error = 0
        self._client: redis.Redis | None = None
        self._server_commands: list[str] | None = None
        self._matches: list[str] = []
        self.commands: dict[str, Callable[[list[str]], bool | None]] = {
            "help": self.do_help, "?": self.do_help,
            "exit": self.do_exit, "quit": self.do_exit,
            "join": self.do_join, "leave": self.do_leave, "query": self.do_query,
            "connect": self.do_connect, "consistency": self.do_consistency,
            "put": self.do_put, "get": self.do_get, "delete": self.do_delete,
            "del": self.do_delete, "batch": self.do_batch, "status": self.do_status,
            "members": self.do_members, "ring": self.do_ring, "where": self.do_where,
        }

    # -- plumbing ----------------------------------------------------------------

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = _raw_client(self.server, self.timeout, self.consistency)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def say(self, line: str = "") -> None:
        print(line, file=self.out, flush=True)

    @property
    def prompt(self) -> str:
        level = f" [{self.consistency}]" if self.consistency else ""
        return f"twistkv {self.server}{level}> "

    def show(self, outcome: Outcome) -> None:
        if self.as_json:
            self.say(dumps(outcome.data))
        elif outcome.code == EXIT_NOT_FOUND:
            self.say("(nil)")
        elif isinstance(outcome.text, bytes):
            self.say(outcome.text.decode("utf-8", errors="backslashreplace").rstrip("\n"))
        else:
            self.say(outcome.text)

    def execute(self, line: str) -> bool:
        """Run one line; C{False} means the REPL should end."""
        line = line.strip()
        if not line or line.startswith("#"):
            return True
        try:
            words = shlex.split(line)
        except ValueError as exc:
            self.say(f"(error) cannot split the line: {exc}")
            self.last_error = 2
            return True
        if not words:
            return True
        handler = self.commands.get(words[0].lower())
        try:
            if handler is None:
                self.raw(words)
                return True
            return handler(words[1:]) is not False
        except CLIError as exc:
            self.say(f"(error) {exc.message}")
            self.last_error = exc.code
        except redis.RedisError as exc:
            err = translate(exc, self.server)
            self.say(f"(error) {err.message}")
            self.last_error = err.code
        return True

    def raw(self, words: list[str]) -> None:
        """Send C{words} as one Redis command; show the reply like redis-cli."""
        args = [w.encode("utf-8", errors="surrogateescape") for w in words]
        with errors_mapped(self.server):
            reply = command(self.client, *args)
        if self.as_json:
            self.say(dumps(reply))
        elif isinstance(reply, bytes) and reply in (b"OK", b"PONG", b"QUEUED"):
            self.say(reply.decode())
        else:
            self.say(format_reply(reply))

    def _need(self, args: list[str], count: int, usage: str, at_least: bool = False) -> None:
        if len(args) < count or (not at_least and len(args) != count):
            raise UsageError(f"usage: {usage}")

    def _members(self) -> list[dict[str, Any]]:
        return _data.fetch_members(self.client, self.server)

    def resolve(self, target: str) -> Address:
        """A client address from a host:port, a peer address or a node id (via MEMBERS)."""
        try:
            members = self._members()
        except CLIError:
            members = []
        for m in members:
            if target in (m.get("id"), m.get("address")) and m.get("client"):
                return parse_address(str(m["client"]))
        return parse_address(target)

    def server_commands(self) -> list[str]:
        """The node's command names (lower case), asked once; empty if it does not answer."""
        if self._server_commands is None:
            names: list[str] = []
            try:
                for entry in command(self.client, "COMMAND"):
                    if isinstance(entry, list | tuple) and entry:
                        names.append(text(entry[0]).lower())
            except Exception:  # noqa: BLE001 - completion is a nicety
                names = []
            self._server_commands = sorted(set(names))
        return self._server_commands

    def completions(self, line: str, word: str) -> list[str]:
        """Candidates for C{word} in C{line} (command names first, then a few arguments)."""
        before = line[: len(line) - len(word)].split()
        if not before:
            pool: Iterable[str] = sorted(set(BUILTINS) | set(self.server_commands()))
            upper = word.isupper()
            return [(c.upper() if upper else c) + " " for c in pool
                    if c.startswith(word.lower())]
        if before[0].lower() == "consistency" and len(before) == 1:
            return [c + " " for c in (*CONSISTENCY_LEVELS, "default") if c.startswith(word)]
        if before[0].lower() in ("query", "connect") and len(before) == 1:
            try:
                ids = [str(m["id"]) for m in self._members()]
            except CLIError:
                ids = []
            return [i + " " for i in ids if i.startswith(word)]
        return []

    # -- commands ------------------------------------------------------------------

    def do_help(self, args: list[str]) -> None:
        if args and args[0].lower() == "server":
            self.raw(["HELP"])
        else:
            self.say(HELP)

    def do_exit(self, args: list[str]) -> bool:
        return False

    def do_join(self, args: list[str]) -> None:
        self._need(args, 1, "join <peer host:port>")
        target = args[0]
        try:
            with errors_mapped(self.server):
                reply = command(self.client, "JOIN", target)
            self.say(format_reply(reply))
            return
        except CLIError as exc:
            if "unknown command" not in exc.message.lower():
                raise
        peer = target
        try:
            for m in self._members():
                if target in (m.get("client"), m.get("id")) and m.get("address"):
                    peer = str(m["address"])
        except CLIError:
            pass
        note = "" if peer == target else f" ({target} is a client address; its peer address is {peer})"
        self.say(
            f"This node has no JOIN command: a twistkv node joins a cluster when it starts.\n"
            f"Start the new node with --seeds pointing at a member's peer address{note}:\n"
            f"  twistd -n kvnode --node-id n4 --listen tcp:7004 --peer-listen tcp:7104 "
            f"--http tcp:8004 --seeds {peer}\n"
            f"or let the launcher do it: twistkv cluster up -n 3 (n2.. are seeded from n1).\n"
            f"A restarted node rejoins through the members it remembers; 'members' shows who is in."
        )

    def do_leave(self, args: list[str]) -> None:
        """LEAVE: the node streams its ranges to their new owners, then leaves and stops."""
        with errors_mapped(self.server):
            reply = command(self.client, "LEAVE", *args)
        self.say(format_reply(reply))

    def do_query(self, args: list[str]) -> None:
        self._need(args, 2, "query <addr|node-id> <key>")
        address = self.resolve(args[0])
        client = _raw_client(address, self.timeout, self.consistency)
        try:
            with errors_mapped(address):
                value = command(client, "GET", args[1].encode("utf-8", "surrogateescape"))
                node = _node_id(client)
        finally:
            client.close()
        label = f"{node} at {address}" if node else str(address)
        if self.as_json:
            self.say(dumps({"node": node, "address": str(address), "key": args[1],
                            "value": value}))
        else:
            self.say(f"{label}: {format_reply(value)}")

    def do_connect(self, args: list[str]) -> None:
        self._need(args, 1, "connect <host:port|node-id>")
        address = self.resolve(args[0])
        self.close()
        self.server = address
        self._server_commands = None
        with errors_mapped(address):
            self.client.ping()
        self.say(f"connected to {address}")

    def do_consistency(self, args: list[str]) -> None:
        if not args:
            self.raw(["CONSISTENCY"])
            return
        level = args[0].lower()
        if level not in (*CONSISTENCY_LEVELS, "default"):
            raise UsageError("usage: consistency one|quorum|all|default")
        self.close()
        self.consistency = None if level == "default" else level
        with errors_mapped(self.server):
            self.client.ping()
        self.say("OK")

    def do_put(self, args: list[str]) -> None:
        self._need(args, 2, "put <key> <value>")
        self.show(_data.put(self.client, self.server, args[0], args[1]))

    def do_get(self, args: list[str]) -> None:
        self._need(args, 1, "get <key>")
        self.show(_data.get(self.client, self.server, args[0]))

    def do_delete(self, args: list[str]) -> None:
        self._need(args, 1, "delete <key> [key ...]", at_least=True)
        self.show(_data.delete(self.client, self.server, args))

    def do_batch(self, args: list[str]) -> None:
        self.show(_data.batch(self.client, self.server, args))

    def do_status(self, args: list[str]) -> None:
        self.show(_status.status(self.client, self.server, timeout=self.timeout))

    def do_members(self, args: list[str]) -> None:
        self.show(_data.members(self.client, self.server))

    def do_ring(self, args: list[str]) -> None:
        self.show(_data.ring(self.client, self.server))

    def do_where(self, args: list[str]) -> None:
        self._need(args, 1, "where <key>")
        self.show(_data.where(self.client, self.server, args[0]))


def _node_id(client: redis.Redis) -> str | None:
    try:
        body = text(command(client, "INFO", "server"))
    except redis.RedisError:
        return None
    for line in body.splitlines():
        if line.startswith("node_id:"):
            return line.split(":", 1)[1].strip()
    return None


def _setup_readline(repl: Repl, history: Path | None) -> Callable[[], None]:
    """History and completion on a terminal; returns the function that saves history."""
    try:
        import readline
    except ImportError:  # pragma: no cover - Windows without pyreadline
        return lambda: None

    def complete(word: str, state: int) -> str | None:
        if state == 0:
            repl._matches = repl.completions(readline.get_line_buffer()[: readline.get_endidx()],
                                             word)
        matches = repl._matches
        return matches[state] if state < len(matches) else None

    readline.set_completer(complete)
    readline.set_completer_delims(" \t\n\"'")
    if "libedit" in (readline.__doc__ or ""):  # macOS Python
        readline.parse_and_bind("bind ^I rl_complete")
    else:
        readline.parse_and_bind("tab: complete")
    if history is None:
        return lambda: None
    readline.set_history_length(HISTORY_LENGTH)
    try:
        readline.read_history_file(history)
    except (FileNotFoundError, PermissionError, OSError):
        pass

    def save() -> None:
        try:
            history.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(history)
        except OSError:
            pass

    return save


def run(ns: argparse.Namespace) -> int:
    """Read and run lines until C{exit} or end of input."""
    repl = Repl(parse_address(ns.server), timeout=ns.timeout, consistency=ns.consistency,
                as_json=ns.json)
    interactive = sys.stdin.isatty()
    try:
        if not interactive:
            for line in sys.stdin:
                if not repl.execute(line):
                    break
            return repl.last_error
        history = None if ns.no_history else Path(
            os.path.expanduser(ns.history_file or os.environ.get("TWISTKV_HISTFILE")
                               or HISTORY_FILE))
        save = _setup_readline(repl, history)
        try:
            repl.server_commands()  # for completion; also tells us early if nobody answers
            greeting = f"twistkv repl on {repl.server}. Type 'help' for commands, 'exit' to leave."
            repl.say(greeting)
            while True:
                try:
                    line = input(repl.prompt)
                except EOFError:
                    repl.say()
                    break
                except KeyboardInterrupt:
                    repl.say("^C")
                    continue
                if not repl.execute(line):
                    break
        finally:
            save()
        return 0
    finally:
        repl.close()
