"""Redis's own command-line tools against a node: redis-cli and redis-benchmark.

Skipped (with the reason) where the Debian redis-tools package is missing;
`make system-deps` installs it.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import time

import pytest

from .conftest import HOST, Node, NodeFactory

pytestmark = pytest.mark.integration

REDIS_CLI = shutil.which("redis-cli")
REDIS_BENCHMARK = shutil.which("redis-benchmark")
needs_cli = pytest.mark.skipif(
    REDIS_CLI is None, reason="redis-cli not installed (apt-get install redis-tools)"
)
needs_benchmark = pytest.mark.skipif(
    REDIS_BENCHMARK is None, reason="redis-benchmark not installed (apt-get install redis-tools)"
)


@pytest.fixture(scope="module")
def tools_node(module_node_factory: NodeFactory) -> Node:
    """One node (RocksDB, fsync always) for this module."""
    return module_node_factory.start("tools")


def cli(node: Node, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run `redis-cli -h 127.0.0.1 -p PORT args...` to completion."""
    assert REDIS_CLI is not None
    return subprocess.run(
        [REDIS_CLI, "-h", HOST, "-p", str(node.client_port), *args],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


@needs_cli
def test_redis_cli_set_get(tools_node: Node) -> None:
    """`redis-cli SET k v` prints OK and `redis-cli GET k` prints v, exit status 0."""
    done = cli(tools_node, "SET", "cli:k", "hello world")
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "OK", "")
    done = cli(tools_node, "GET", "cli:k")
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "hello world", "")
    done = cli(tools_node, "GET", "cli:missing")
    assert done.returncode == 0 and done.stdout.strip() == ""
    done = cli(tools_node, "--no-raw", "DBSIZE")
    assert re.fullmatch(r"\(integer\) \d+", done.stdout.strip()), done.stdout


@needs_cli
def test_redis_cli_pipe_mode_reads_commands_from_stdin(tools_node: Node) -> None:
    """Commands piped into redis-cli (one per line) all run and answer in order."""
    assert REDIS_CLI is not None
    done = subprocess.run(
        [REDIS_CLI, "-h", HOST, "-p", str(tools_node.client_port)],
        input="SET cli:piped 1\nINCR cli:piped\nGET cli:piped\n",
        capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["OK", "2", "2"]


#: Terminal colour codes (redis-cli colours its help even on TERM=dumb).
ANSI = re.compile(rb"\x1b\[[0-9;]*[A-Za-z]")


class Pty:
    """redis-cli on a pseudo-terminal, so it runs its interactive (linenoise) mode."""

    def __init__(self, argv: list[str]) -> None:
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
            env={**os.environ, "TERM": "dumb", "HOME": os.environ.get("HOME", "/tmp")},
        )
        os.close(slave)
        self.output = b""
        #: Where in the colourless output the next L{read_until} starts looking.
        self._pos = 0

    def text(self) -> bytes:
        """Everything redis-cli wrote so far, without terminal colour codes."""
        return ANSI.sub(b"", self.output)

    def read_until(self, pattern: bytes, timeout: float = 10) -> None:
        """Read until C{pattern} (a regex) appears after the previous match."""
        deadline = time.monotonic() + timeout
        while (match := re.compile(pattern).search(self.text(), self._pos)) is None:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {pattern!r} within {timeout} s; output: {self.output!r}"
            ready, _, _ = select.select([self.master], [], [], remaining)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    chunk = b""
                assert chunk, f"redis-cli exited before {pattern!r}; output: {self.output!r}"
                self.output += chunk
        self._pos = match.end()

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\r")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        os.close(self.master)


@needs_cli
def test_redis_cli_interactive_startup_prints_no_errors(tools_node: Node) -> None:
    """Interactive redis-cli (which fetches COMMAND DOCS at startup for its hints and help)
    shows a prompt, runs commands, shows our command summaries in `help`, and prints no error.
    """
    assert REDIS_CLI is not None
    prompt = rf"{HOST}:{tools_node.client_port}> ".encode()
    session = Pty([REDIS_CLI, "-h", HOST, "-p", str(tools_node.client_port)])
    try:
        session.read_until(re.escape(prompt))
        session.type("SET cli:interactive yes")
        session.read_until(rb"OK")
        session.type("GET cli:interactive")
        session.read_until(rb'"yes"')
        session.type("help GET")
        session.read_until(rb"summary: [^\r\n]*\w")
        session.read_until(re.escape(prompt))
        session.type("quit")
        assert session.proc.wait(10) == 0
    finally:
        session.close()
    text = session.text().decode(errors="replace")
    assert "(error)" not in text, text
    assert "ERR" not in text, text
    assert "Error" not in text, text


@needs_benchmark
def test_redis_benchmark_set_get_completes(tools_node: Node) -> None:
    """redis-benchmark -t set,get -n 2000 -c 10 -q exits 0, reports requests/s for SET and
    GET, and leaves its key with its 3-byte value. Not a performance test: no rates are judged.
    """
    assert REDIS_BENCHMARK is not None
    done = subprocess.run(
        [REDIS_BENCHMARK, "-h", HOST, "-p", str(tools_node.client_port),
         "-t", "set,get", "-n", "2000", "-c", "10", "-q"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    out = done.stdout.replace("\r", "\n")
    assert re.search(r"^SET: [\d.]+ requests per second", out, re.MULTILINE), out
    assert re.search(r"^GET: [\d.]+ requests per second", out, re.MULTILINE), out
    assert "ERR" not in out + done.stderr

    client = tools_node.client()
    # Without -r, redis-benchmark uses the key name literally; -d defaults to 3-byte values.
    value = client.get("key:__rand_int__")
    assert value is not None and len(value) == 3
