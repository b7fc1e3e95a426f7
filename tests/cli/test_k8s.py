"""C{twistkv k8s-prestop} (twistkv/cli/_k8s.py): LEAVE on scale-down, drain otherwise.

The decision is checked exhaustively over ordinals, replica counts and API outcomes. The API
call runs against a fake Kubernetes API server over real TLS on 127.0.0.1 (a self-signed
certificate made at test time with C{cryptography}, given to the code as the ServiceAccount's
C{ca.crt}). LEAVE runs against a fake node that speaks enough RESP3 for the CLI's client and
plays a scripted ring-status sequence. No test sleeps for long: the fake node's statuses
advance per poll, and the waits are bounded by tiny timeouts.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from clihelpers import Result

from twistkv.cli import _k8s
from twistkv.cli._client import Address, connect
from twistkv.cli._k8s import (
    Action,
    ApiFailure,
    StatefulSetView,
    decide,
    default_api_server,
    leave_and_wait,
    pod_ordinal,
    read_statefulset,
    statefulset_view,
)
from twistkv.node.rebalance import LEAVE_LINGER

Cli = Callable[..., Result]
TOKEN = "test-token-123"


@pytest.fixture(autouse=True)
def _no_pod_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests run the same inside a pod (CI on Kubernetes): the hook's env defaults unset."""
    for name in ("POD_NAME", "POD_NAMESPACE", "KUBERNETES_SERVICE_HOST",
                 "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(name, raising=False)


# -- the decision ------------------------------------------------------------------------


def test_pod_ordinal_reads_statefulset_pod_names() -> None:
    """A StatefulSet pod is <set>-<ordinal>; the set name may itself contain dashes; names
    without a canonical decimal ordinal have none."""
    assert pod_ordinal("twistkv-0") == ("twistkv", 0)
    assert pod_ordinal("twistkv-3") == ("twistkv", 3)
    assert pod_ordinal("my-kv-store-12") == ("my-kv-store", 12)
    for name in ("twistkv", "twistkv-", "-3", "twistkv-03", "twistkv-x", "twistkv-3a", ""):
        assert pod_ordinal(name) is None, name


ORDINALS: list[int | None] = [None, 0, 1, 2, 3, 4, 5, 9]
FAILURES = [ApiFailure("HTTP 403: forbidden"), ApiFailure("timed out"),
            ApiFailure("the answer is not a StatefulSet")]


@pytest.mark.parametrize("ordinal", ORDINALS)
def test_decide_exhaustively(ordinal: int | None) -> None:
    """For every replica count 0-9, deletion state and API failure: LEAVE exactly when the
    API answered, the pod has an ordinal, the StatefulSet is neither deleted nor scaled to
    zero, and the ordinal is >= spec.replicas; every doubt is a drain marked as fallback."""
    for api in FAILURES:
        decision = decide(ordinal, api)
        assert decision.action is Action.DRAIN and decision.fallback
        assert api.reason in decision.reason and "never LEAVE" in decision.reason
    for replicas in range(10):
        for deleting in (False, True):
            view = StatefulSetView(replicas=replicas, deleting=deleting)
            decision = decide(ordinal, view)
            scaled_away = (ordinal is not None and not deleting and replicas > 0
                           and ordinal >= replicas)
            assert decision.action is (Action.LEAVE if scaled_away else Action.DRAIN), (
                ordinal, replicas, deleting)
            assert decision.fallback is (ordinal is None), (ordinal, replicas, deleting)
            assert decision.reason


def test_decide_explains_itself() -> None:
    """The one-line reasons name the numbers compared and the cases that stop everything."""
    assert decide(3, StatefulSetView(3)).reason.startswith("ordinal 3 >= spec.replicas 3")
    assert "restart" in decide(1, StatefulSetView(3)).reason
    assert "scaled to 0" in decide(2, StatefulSetView(0)).reason
    assert "being deleted" in decide(5, StatefulSetView(3, deleting=True)).reason


def statefulset_document(replicas: Any = 3, **extra: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "twistkv", "namespace": "demo"},
        "spec": {"replicas": replicas,
                 "template": {"spec": {"terminationGracePeriodSeconds": 300}}},
    }
    document["metadata"].update(extra)
    return document


def test_statefulset_view_reads_replicas_deletion_and_grace() -> None:
    """spec.replicas, metadata.deletionTimestamp and the template's grace period are read;
    a missing grace period is Kubernetes' default of 30 s."""
    assert statefulset_view(statefulset_document(4)) == StatefulSetView(4, False, 300)
    deleting = statefulset_document(3, deletionTimestamp="2026-11-23T08:00:00Z")
    assert statefulset_view(deleting).deleting is True
    bare = {"kind": "StatefulSet", "spec": {"replicas": 2}}
    assert statefulset_view(bare) == StatefulSetView(2, False, 30)


@pytest.mark.parametrize("document", [
    None, [], "StatefulSet", {"kind": "Status", "code": 404},
    {"kind": "StatefulSet"}, {"kind": "StatefulSet", "spec": None},
    statefulset_document(None), statefulset_document("3"), statefulset_document(True),
    statefulset_document(-1), statefulset_document(2.0),
])
def test_statefulset_view_rejects_anything_else(document: Any) -> None:
    """A document that is not a StatefulSet with a non-negative integer spec.replicas is a
    ValueError (so read_statefulset reports it as a failure, never guesses)."""
    with pytest.raises(ValueError):
        statefulset_view(document)


def test_default_api_server_follows_in_cluster_config() -> None:
    """KUBERNETES_SERVICE_HOST/PORT when set (IPv6 in brackets), else the service DNS name."""
    assert default_api_server({"KUBERNETES_SERVICE_HOST": "10.96.0.1",
                               "KUBERNETES_SERVICE_PORT": "443"}) == "https://10.96.0.1:443"
    assert default_api_server({"KUBERNETES_SERVICE_HOST": "fd00::1",
                               "KUBERNETES_SERVICE_PORT": "443"}) == "https://[fd00::1]:443"
    assert default_api_server({}) == "https://kubernetes.default.svc"


# -- a fake Kubernetes API over TLS -----------------------------------------------------


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (IP SAN) and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-kube-apiserver")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert_path, key_path


@dataclass
class FakeApi:
    """What the fake API server answers next, and what it was asked."""

    url: str
    status: int = 200
    body: bytes = b""
    delay: float = 0.0
    requests: list[tuple[str, str | None]] = field(default_factory=list)

    def answer(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body if isinstance(body, bytes) else json.dumps(body).encode()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def sa_dir(tmp_path: Path, certificate: tuple[Path, Path]) -> Path:
    """A ServiceAccount directory as Kubernetes mounts it: token, ca.crt, namespace."""
    directory = tmp_path / "serviceaccount"
    directory.mkdir()
    (directory / "token").write_text(TOKEN + "\n")
    (directory / "ca.crt").write_bytes(certificate[0].read_bytes())
    (directory / "namespace").write_text("demo")
    return directory


@pytest.fixture
def fake_api(certificate: tuple[Path, Path]) -> Iterator[FakeApi]:
    """An HTTPS server on 127.0.0.1 that records each request's path and Authorization."""
    state = FakeApi(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            state.requests.append((self.path, self.headers.get("Authorization")))
            if state.delay:
                time.sleep(state.delay)
            try:
                self.send_response(state.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(state.body)))
                self.end_headers()
                self.wfile.write(state.body)
            except OSError:
                pass  # the client gave up (timeout test)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    state.url = f"https://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


SET_PATH = "/apis/apps/v1/namespaces/demo/statefulsets/twistkv"


def test_read_statefulset_over_tls_with_the_token(fake_api: FakeApi, sa_dir: Path) -> None:
    """The GET goes to the apps/v1 StatefulSet path with the token as a Bearer header, over
    TLS verified with the directory's ca.crt, and yields the StatefulSet's view."""
    fake_api.answer(200, statefulset_document(5))
    result = read_statefulset(fake_api.url, "demo", "twistkv", service_account_dir=sa_dir)
    assert result == StatefulSetView(5, False, 300)
    assert fake_api.requests == [(SET_PATH, f"Bearer {TOKEN}")]


def test_read_statefulset_never_goes_through_a_proxy(
    fake_api: FakeApi, sa_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTPS_PROXY/https_proxy set in the pod (for the outside world) are ignored: the API
    server is reached directly and the token is not handed to a proxy."""
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    fake_api.answer(200, statefulset_document(2))
    result = read_statefulset(fake_api.url, "demo", "twistkv", service_account_dir=sa_dir)
    assert result == StatefulSetView(2, False, 300)


@pytest.mark.parametrize(("status", "body", "expected"), [
    (403, {"kind": "Status", "status": "Failure", "reason": "Forbidden", "code": 403,
           "message": 'statefulsets.apps "twistkv" is forbidden: User "system:serviceaccount'
                      ':demo:default" cannot get resource "statefulsets"'},
     'HTTP 403: statefulsets.apps "twistkv" is forbidden'),
    (401, b"Unauthorized", "HTTP 401: Unauthorized"),
    (500, b"", "HTTP 500: no details"),
    (200, b"<html>captive portal</html>", "Expecting value"),
    (200, b"\xff\xfe garbage", "GET https://"),
    (200, {"kind": "Status", "code": 404}, "not a StatefulSet"),
    (200, statefulset_document("three"), "no valid spec.replicas"),
])
def test_read_statefulset_reports_every_failure(
    fake_api: FakeApi, sa_dir: Path, status: int, body: Any, expected: str
) -> None:
    """Errors and garbage answers become one-line ApiFailures naming the cause; nothing
    raises."""
    fake_api.answer(status, body)
    result = read_statefulset(fake_api.url, "demo", "twistkv", service_account_dir=sa_dir)
    assert isinstance(result, ApiFailure)
    assert expected in result.reason
    assert "\n" not in result.reason


def test_read_statefulset_times_out(fake_api: FakeApi, sa_dir: Path) -> None:
    """An API server that does not answer within the timeout is a failure, not a hang."""
    fake_api.answer(200, statefulset_document(3))
    fake_api.delay = 1.0
    started = time.monotonic()
    result = read_statefulset(fake_api.url, "demo", "twistkv", service_account_dir=sa_dir,
                              timeout=0.2)
    assert time.monotonic() - started < 0.9
    assert isinstance(result, ApiFailure)
    assert "timed out" in result.reason


def test_read_statefulset_verifies_the_server_certificate(
    fake_api: FakeApi, sa_dir: Path, tmp_path: Path
) -> None:
    """A server whose certificate the ServiceAccount CA did not sign is refused: the token
    is never sent to it."""
    other, _ = make_certificate(tmp_path)
    (sa_dir / "ca.crt").write_bytes(other.read_bytes())
    fake_api.answer(200, statefulset_document(3))
    result = read_statefulset(fake_api.url, "demo", "twistkv", service_account_dir=sa_dir)
    assert isinstance(result, ApiFailure)
    assert "CERTIFICATE_VERIFY_FAILED" in result.reason
    assert fake_api.requests == []


def test_read_statefulset_without_token_or_server(sa_dir: Path) -> None:
    """No token (automount off), a bad CA file, or nothing listening: failures that say so."""
    (sa_dir / "ca.crt").write_text("not a certificate")
    bad_ca = read_statefulset("https://127.0.0.1:1", "demo", "twistkv", service_account_dir=sa_dir)
    assert isinstance(bad_ca, ApiFailure) and "cannot load the CA" in bad_ca.reason
    (sa_dir / "token").unlink()
    no_token = read_statefulset("https://127.0.0.1:1", "demo", "twistkv",
                                service_account_dir=sa_dir)
    assert isinstance(no_token, ApiFailure) and "no ServiceAccount token" in no_token.reason


def test_read_statefulset_nothing_listening(sa_dir: Path) -> None:
    """A refused connection is a failure naming the URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = read_statefulset(f"https://127.0.0.1:{port}", "demo", "twistkv",
                              service_account_dir=sa_dir, timeout=1)
    assert isinstance(result, ApiFailure)
    assert f"127.0.0.1:{port}" in result.reason and "refused" in result.reason.lower()


# -- a fake node ---------------------------------------------------------------------------


@dataclass
class FakeNode:
    """A RESP3 server with a scripted ring status.

    C{statuses} is the sequence REBALANCE walks through, one step per poll, once LEAVE was
    accepted (before it, the first status repeats). C{leave_errors} are answered to the
    first LEAVEs, in order. After C{stop_after} polls past the end, the node stops."""

    statuses: list[str]
    leave_errors: list[str] = field(default_factory=list)
    stop_after: int | None = None
    commands: list[str] = field(default_factory=list)
    port: int = 0
    left_at: int = 0
    accepted: bool = False
    server: socketserver.ThreadingTCPServer | None = None

    def status(self) -> str:
        if not self.accepted:
            return self.statuses[0]
        self.left_at += 1
        return self.statuses[min(self.left_at, len(self.statuses) - 1)]

    def answer(self, words: list[str]) -> bytes:
        self.commands.append(" ".join(words))
        verb = words[0].upper()
        if verb == "HELLO":
            return b"%2\r\n+server\r\n+fake\r\n+proto\r\n:3\r\n"
        if verb == "LEAVE":
            if self.leave_errors:
                return f"-{self.leave_errors.pop(0)}\r\n".encode()
            if self.statuses[0] != "normal":
                return b"-ERR this node is not a normal ring member\r\n"
            if self.accepted:
                return b"-ERR this node is already running leave:twistkv-3\r\n"
            self.accepted = True
            return b"+OK (leaving: ranges stream to their new owners, then this node stops)\r\n"
        if verb == "REBALANCE":
            status = self.status()
            if (self.stop_after is not None
                    and self.left_at >= len(self.statuses) - 1 + self.stop_after):
                self.stop()
            reply = f"%3\r\n+node\r\n+twistkv-3\r\n+status\r\n+{status}\r\n+operation\r\n"
            if status == "leaving":
                reply += ("%4\r\n+phase\r\n+streaming\r\n+progress\r\n,0.5\r\n"
                          "+keys\r\n:1200\r\n+bytes\r\n:3145728\r\n")
            else:
                reply += "_\r\n"
            return reply.encode()
        return b"+OK\r\n"

    def stop(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None

            def close() -> None:
                server.shutdown()
                server.server_close()

            threading.Thread(target=close, daemon=True).start()

    @property
    def leaves(self) -> int:
        return sum(1 for c in self.commands if c.upper() == "LEAVE")


def _read_command(reader: Any) -> list[str] | None:
    line = reader.readline()
    if not line:
        return None
    assert line.startswith(b"*"), line
    words = []
    for _ in range(int(line[1:])):
        size = int(reader.readline()[1:])
        words.append(reader.read(size + 2)[:-2].decode())
    return words


@pytest.fixture
def fake_node() -> Iterator[Callable[..., FakeNode]]:
    nodes: list[FakeNode] = []

    def start(statuses: list[str], **kwargs: Any) -> FakeNode:
        node = FakeNode(statuses, **kwargs)

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while node.server is not None:
                    words = _read_command(self.rfile)
                    if words is None:
                        return
                    self.wfile.write(node.answer(words))

        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        node.server, node.port = server, server.server_address[1]
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()


def leave(node: FakeNode, budget: float = 5.0, **kwargs: Any) -> tuple[Any, list[str]]:
    lines: list[str] = []
    kwargs.setdefault("settle", 0.0)
    address = Address("127.0.0.1", node.port)
    client = connect(address, timeout=2)
    try:
        result = leave_and_wait(client, address, budget, log=lines.append, poll=0.01, **kwargs)
    finally:
        client.close()
    return result, lines


def test_leave_is_sent_once_and_waited_for(fake_node: Callable[..., FakeNode]) -> None:
    """normal -> LEAVE -> leaving ... -> left: one LEAVE, success once the node says left,
    each status change logged."""
    node = fake_node(["normal", "leaving", "leaving", "leaving", "left"])
    result, lines = leave(node)
    assert result.left is True
    assert node.leaves == 1
    assert node.left_at == 4
    assert lines[0] == "node status: normal"
    assert lines[1].startswith("LEAVE sent: OK (leaving")
    assert lines[2:] == ["node status: leaving", "node status: left"]


def test_leave_waits_behind_another_movement(fake_node: Callable[..., FakeNode]) -> None:
    """Pods scaled away together leave one at a time: a LEAVE refused because another node
    moves ranges is retried (logged once) until accepted; a retracted leave answering
    'already running' is not an error."""
    busy = "another range movement is under way (leave:twistkv-4); retry later"
    node = fake_node(["normal", "normal", "leaving", "left"],
                     leave_errors=[f"ERR {busy}"] * 3)
    result, lines = leave(node)
    assert result.left is True
    assert node.leaves == 5  # 3 refused, 1 accepted, 1 while retracted (status normal)
    assert lines.count(f"waiting to leave: {busy}") == 1
    assert sum(line.startswith("LEAVE sent") for line in lines) == 1


def test_left_node_is_given_time_to_stop_by_itself(fake_node: Callable[..., FakeNode]) -> None:
    """After 'left' the hook keeps polling for `settle` seconds: at least the node's linger
    (which spreads the news; an early return would have the kubelet SIGTERM it mid-linger)
    and less than the linger plus the half second after which the node stops itself (whose
    exit would kill the hook mid-run). A node that stops sooner ends the wait at once."""
    assert LEAVE_LINGER <= _k8s.LEFT_SETTLE < LEAVE_LINGER + 0.5
    node = fake_node(["normal", "leaving", "left"])
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += 0.5

    result, _ = leave(node, settle=3.0, clock=lambda: now[0], sleep=sleep)
    assert result.left is True
    assert now[0] == 1.0 + 3.0  # 'left' seen after two sleeps, then 3 s of settling

    stopping = fake_node(["normal", "leaving", "left"], stop_after=0)
    started = time.monotonic()
    result, lines = leave(stopping, settle=30.0)
    assert result.left is True and lines[-1] == "node status: left"
    assert time.monotonic() - started < 10


def test_leave_progress_is_logged(fake_node: Callable[..., FakeNode]) -> None:
    """While the node leaves, REBALANCE's operation (phase, progress, keys, bytes) is logged
    every `progress_every` seconds, so `kubectl logs` shows a long leave advancing."""
    node = fake_node(["normal", *["leaving"] * 5, "left"])
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += 10.0

    result, lines = leave(node, budget=600, clock=lambda: now[0], sleep=sleep,
                          progress_every=15.0)
    assert result.left is True
    progress = [line for line in lines if line.startswith("leaving:")]
    assert progress == ["leaving: streaming, 50%, 1200 keys and 3.0 MiB streamed"] * 2


def test_leave_refused_for_good_is_a_failure(fake_node: Callable[..., FakeNode]) -> None:
    """Any other refusal (the last node of the ring) ends the wait at once with the node's
    words."""
    node = fake_node(["normal"], leave_errors=["ERR the last node of the ring cannot leave"])
    result, _ = leave(node)
    assert result.left is False
    assert "refused LEAVE: the last node of the ring cannot leave" in result.message


def test_leave_not_a_ring_member(fake_node: Callable[..., FakeNode]) -> None:
    """A node still joining holds no ranges of its own to hand over: no LEAVE, a failure."""
    node = fake_node(["joining"])
    result, _ = leave(node)
    assert result.left is False and "joining" in result.message
    assert node.leaves == 0


def test_leave_gives_up_at_the_deadline(fake_node: Callable[..., FakeNode]) -> None:
    """A leave that never finishes is reported when the budget runs out (a fake clock
    advanced by each sleep), before the kubelet would kill the hook."""
    node = fake_node(["normal", "leaving"])
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += 1.0

    result, _ = leave(node, budget=30, clock=lambda: now[0], sleep=sleep)
    assert result.left is False
    assert result.message == "LEAVE did not finish within 30 s (status leaving)"
    assert now[0] == 30.0


def test_leave_node_stops_after_left_or_is_gone(fake_node: Callable[..., FakeNode]) -> None:
    """A node that stops answering right after 'leaving' is reported with that last status
    (not as left); one that never answered never started leaving."""
    node = fake_node(["normal", "leaving"], stop_after=0)
    result, _ = leave(node)
    assert result.left is False
    assert "stopped answering; its last status was leaving" in result.message

    gone = fake_node(["normal"])
    gone.stop()
    time.sleep(0.2)
    result, _ = leave(gone)
    assert result.left is False and "never started leaving" in result.message


# -- the command, end to end -------------------------------------------------------------


def prestop(cli: Cli, fake_api: FakeApi, sa_dir: Path, node: FakeNode | None,
            *extra: str) -> Result:
    server = f"127.0.0.1:{node.port}" if node is not None else "127.0.0.1:1"
    return cli("k8s-prestop", "-s", server, "--api-server", fake_api.url,
               "--service-account-dir", str(sa_dir), "--drain-seconds", "0",
               "--api-timeout", "0.5", *extra)


def test_scaled_away_pod_leaves(cli: Cli, fake_api: FakeApi, sa_dir: Path,
                                fake_node: Callable[..., FakeNode]) -> None:
    """twistkv-3 with spec.replicas 3: the hook reads the StatefulSet named after the pod in
    the ServiceAccount's namespace, sends LEAVE, waits for 'left' and exits 0."""
    fake_api.answer(200, statefulset_document(3))
    node = fake_node(["normal", "leaving", "left"], stop_after=0)
    result = prestop(cli, fake_api, sa_dir, node, "--pod", "twistkv-3")
    assert result.code == 0, result
    assert fake_api.requests == [(SET_PATH, f"Bearer {TOKEN}")]
    assert node.leaves == 1
    lines = result.err.splitlines()
    assert lines[0] == ("twistkv k8s-prestop: pod twistkv-3: leave: ordinal 3 >= "
                        "spec.replicas 3: this pod is scaled away")
    assert lines[-1].endswith("left the cluster: its ranges are with their new owners")


def test_pod_that_stays_only_drains(cli: Cli, fake_api: FakeApi, sa_dir: Path,
                                    fake_node: Callable[..., FakeNode],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """twistkv-1 with spec.replicas 3 (a restart): no LEAVE, no command at all to the node,
    exit 0; the pod name comes from $POD_NAME."""
    monkeypatch.setenv("POD_NAME", "twistkv-1")
    fake_api.answer(200, statefulset_document(3))
    node = fake_node(["normal"])
    result = prestop(cli, fake_api, sa_dir, node)
    assert result.code == 0
    assert node.commands == []
    assert result.err == ("twistkv k8s-prestop: pod twistkv-1: drain: ordinal 1 < "
                          "spec.replicas 3: a restart (update, eviction, deletion), not a "
                          "scale-down; draining only\n")


@pytest.mark.parametrize(("status", "body", "delay", "cause"), [
    (403, {"kind": "Status", "message": "statefulsets.apps \"twistkv\" is forbidden"}, 0.0,
     "HTTP 403: statefulsets.apps \"twistkv\" is forbidden"),
    (200, statefulset_document(3), 1.5, "timed out"),
    (200, b"}{ not json", 0.0, "Expecting value"),
])
def test_api_trouble_drains_only(cli: Cli, fake_api: FakeApi, sa_dir: Path,
                                 fake_node: Callable[..., FakeNode], status: int, body: Any,
                                 delay: float, cause: str) -> None:
    """A scaled-away pod (twistkv-3, replicas would be 3) whose API call fails (403, a
    timeout, garbage) never LEAVEs: it drains, logs one clear line with the cause, and exits
    1 so the kubelet records the hook's output in an event."""
    fake_api.answer(status, body)
    fake_api.delay = delay
    node = fake_node(["normal"])
    result = prestop(cli, fake_api, sa_dir, node, "--pod", "twistkv-3")
    assert result.code == _k8s.EXIT_FALLBACK
    assert node.commands == []
    (line,) = result.err.splitlines()
    assert line.startswith("twistkv k8s-prestop: pod twistkv-3: drain: cannot read the "
                           "StatefulSet (GET https://127.0.0.1:")
    assert cause in line and line.endswith("draining only, never LEAVE in doubt")


def test_failed_leave_exits_5_and_says_what_to_do(
    cli: Cli, fake_api: FakeApi, sa_dir: Path, fake_node: Callable[..., FakeNode],
    tmp_path: Path
) -> None:
    """A LEAVE the node refuses: exit 5, and the last line names the node and the way out
    (`twistkv remove`); --also-log gets the same lines (the container's stdout in a pod)."""
    fake_api.answer(200, statefulset_document(2))
    node = fake_node(["normal"], leave_errors=["ERR the last node of the ring cannot leave"])
    also = tmp_path / "pid1-stdout"
    result = prestop(cli, fake_api, sa_dir, node, "--pod", "twistkv-2",
                     "--also-log", str(also))
    assert result.code == _k8s.EXIT_LEAVE_FAILED
    last = result.err.splitlines()[-1]
    assert "LEAVE did not complete" in last and "twistkv remove twistkv-2" in last
    assert also.read_text() == result.err


def test_entry_point_runs_as_a_process(fake_api: FakeApi, sa_dir: Path) -> None:
    """`python -m twistkv.cli k8s-prestop` (what the image's `twistkv` script runs) exits
    with the hook's status: 1 for a 403 fallback, 0 for a pod that stays."""
    from clihelpers import run_subprocess

    args = ["k8s-prestop", "--api-server", fake_api.url, "--service-account-dir", str(sa_dir),
            "--pod", "twistkv-2", "--drain-seconds", "0", "-s", "127.0.0.1:1"]
    fake_api.answer(403, {"kind": "Status", "message": "forbidden"})
    denied = run_subprocess(*args, timeout=30)
    assert denied.code == _k8s.EXIT_FALLBACK
    assert "HTTP 403: forbidden" in denied.err
    fake_api.answer(200, statefulset_document(3))
    stays = run_subprocess(*args, timeout=30)
    assert (stays.code, stays.out) == (0, "")
    assert ": drain: ordinal 2 < spec.replicas 3" in stays.err


def test_pod_name_without_ordinal_drains(cli: Cli, fake_api: FakeApi, sa_dir: Path) -> None:
    """A pod name that no StatefulSet makes: no API call, drain, fallback exit."""
    result = prestop(cli, fake_api, sa_dir, None, "--pod", "standalone")
    assert result.code == _k8s.EXIT_FALLBACK
    assert fake_api.requests == []
    assert "cannot tell the StatefulSet from the pod name 'standalone'" in result.err


def test_leave_budget_is_the_grace_period_minus_a_margin(
    cli: Cli, fake_api: FakeApi, sa_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --leave-timeout the wait is the pod template's terminationGracePeriodSeconds
    less GRACE_MARGIN (and the time already spent), so the hook reports before the kill."""
    fake_api.answer(200, statefulset_document(3))
    seen: list[float] = []

    def fake_leave(client: Any, address: Any, budget: float, **_: Any) -> _k8s.LeaveResult:
        seen.append(budget)
        return _k8s.LeaveResult(True, "left")

    monkeypatch.setattr(_k8s, "leave_and_wait", fake_leave)
    assert prestop(cli, fake_api, sa_dir, None, "--pod", "twistkv-4").code == 0
    assert 300 - _k8s.GRACE_MARGIN - 2 < seen[0] <= 300 - _k8s.GRACE_MARGIN
    assert prestop(cli, fake_api, sa_dir, None, "--pod", "twistkv-4",
                   "--leave-timeout", "42").code == 0
    assert seen[1] == 42


# -- against real nodes --------------------------------------------------------------------


@pytest.mark.integration
def test_scaled_away_pod_leaves_a_real_cluster(
    cli: Cli, fake_api: FakeApi, sa_dir: Path, tmp_path: Path
) -> None:
    """Two real twistd nodes holding keys; the hook of "twistkv-1" with spec.replicas 1
    LEAVEs its node and waits: it exits 0 once the node reports left, the node's process
    then exits by itself, and the survivor holds every key and sees the leaver as left.
    The same hook for "twistkv-0" (ordinal 0 < 1) only drains: that node keeps running."""
    from integration.conftest import NodeFactory, wait_until

    factory = NodeFactory(tmp_path / "nodes")
    try:
        stays, leaver = factory.joined_cluster(
            2, storage="memory", extra_args=["--rebalance-drop-delay", "1"])
        keys = [f"k8s:{i}" for i in range(200)]
        for key in keys:
            assert stays.command("SET", key, key) is True
        fake_api.answer(200, statefulset_document(1))

        result = cli("k8s-prestop", "-s", f"127.0.0.1:{leaver.client_port}",
                     "--api-server", fake_api.url, "--service-account-dir", str(sa_dir),
                     "--pod", "twistkv-1", "--leave-timeout", "60")
        assert result.code == 0, result
        assert "node status: left" in result.err, result.err
        assert leaver.proc is not None
        leaver.proc.wait(30)  # raises TimeoutExpired if the node never stops

        wait_until(lambda: stays.members().get(leaver.node_id) in (None, "left"), 10,
                   f"{stays.node_id} sees {leaver.node_id} as left")
        missing = [k for k in keys if stays.command("GET", k, consistency="one") != k]
        assert missing == []

        kept = cli("k8s-prestop", "-s", f"127.0.0.1:{stays.client_port}",
                   "--api-server", fake_api.url, "--service-account-dir", str(sa_dir),
                   "--pod", "twistkv-0", "--drain-seconds", "0")
        assert kept.code == 0 and ": drain: ordinal 0 < spec.replicas 1" in kept.err
        assert stays.command("PING") is True
    finally:
        factory.close()
