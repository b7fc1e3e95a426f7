"""C{twistkv k8s-prestop}: the StatefulSet's preStop hook. A pod being scaled away LEAVEs; a
pod that is only restarting (rolling update, eviction, node drain, C{kubectl delete pod})
drains and keeps its ranges.

A preStop hook is not told why its pod stops, but the StatefulSet says it: a scale-down
lowers C{spec.replicas} first, and the controller then deletes the pods whose ordinal is no
longer below it.
So the hook reads the StatefulSet from the Kubernetes API with the pod's ServiceAccount
token (a Role granting only C{get} on C{statefulsets}), and:

 - ordinal >= C{spec.replicas} (and not 0, and the StatefulSet not being deleted): the pod is
   scaled away. It sends C{LEAVE} to its own node and waits until the node reports C{left}
   (its ranges streamed to their new owners); the node then stops by itself;
 - anything else, B{including any doubt} (API unreachable, 403, a timeout, an answer that is
   not a StatefulSet, a pod name without an ordinal): drain only, as before. A LEAVE on a
   restart would decommission a node that is expected back; a missed LEAVE only leaves a
   node down, which C{twistkv remove} or scaling back up repairs.

This is what the Cassandra and CockroachDB operators do (decommission on scale-down only),
without an operator: the StatefulSet controller plus this hook. The decision is the pure
L{decide}; the rest is I/O (the stdlib's urllib and ssl with the pod's CA file, and the CLI's
redis client for the node), each step injectable for the tests.

test-case-name: tests.cli.test_k8s
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import socket
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import redis

from twistkv.cli._client import Address, command, connect, parse_address, text
from twistkv.cli._errors import CLIError, ServerError

__all__ = [
    "SERVICE_ACCOUNT_DIR",
    "Action",
    "StatefulSetView",
    "ApiFailure",
    "Decision",
    "LeaveResult",
    "pod_ordinal",
    "decide",
    "statefulset_view",
    "default_api_server",
    "read_statefulset",
    "leave_and_wait",
    "add_parser",
    "run",
    "EXIT_FALLBACK",
    "EXIT_LEAVE_FAILED",
]

#: Where Kubernetes mounts the pod's ServiceAccount token, CA bundle and namespace.
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
#: Seconds kept back from the grace period, so that the hook reports a LEAVE that did not
#: finish before the kubelet kills the container.
GRACE_MARGIN = 10.0
#: The grace period Kubernetes applies when the pod template sets none.
DEFAULT_GRACE = 30
#: Seconds between two REBALANCE polls; below LEAVE_LINGER (2 s), so C{left} is seen before
#: the node stops.
POLL_INTERVAL = 0.5
#: Failed polls in a row after which the node is taken to have stopped.
GONE_AFTER = 3
#: Seconds to wait after the node reports C{left}: it lingers
#: C{twistkv.node.rebalance.LEAVE_LINGER} (2 s) so that the news spreads, then stops itself
#: half a second later. Returning sooner would have the kubelet's SIGTERM cut the linger
#: short; waiting longer races the container's exit, which kills the hook mid-run (and the
#: kubelet reports a failed hook).
LEFT_SETTLE = 2.0
#: Seconds between two progress lines while the node leaves.
PROGRESS_EVERY = 15.0
#: Most bytes read from the API server (a StatefulSet is a few KiB).
MAX_ANSWER = 4 * 1024 * 1024

#: Exit status when the hook could not decide and drained only (the API failed, the pod
#: name has no ordinal): the kubelet records a FailedPreStopHook event with the output.
EXIT_FALLBACK = 1
#: Exit status when the pod was scaled away but its LEAVE did not complete.
EXIT_LEAVE_FAILED = 5

_ORDINAL = re.compile(r"^(?P<set>.+)-(?P<ordinal>0|[1-9][0-9]*)$")


# -- the decision (pure) ---------------------------------------------------------------------


class Action(Enum):
    """What the hook does before the node gets SIGTERM."""

    #: Wait a few seconds so the Services stop sending clients here; keep the ranges.
    DRAIN = "drain"
    #: Hand the node's ranges to their new owners and leave the cluster for good.
    LEAVE = "leave"


@dataclass(frozen=True)
class StatefulSetView:
    """What the hook needs from the StatefulSet the API returned."""

    replicas: int
    #: C{metadata.deletionTimestamp} is set: the whole StatefulSet is going away.
    deleting: bool = False
    #: The pod template's C{terminationGracePeriodSeconds}.
    grace_seconds: int = DEFAULT_GRACE


@dataclass(frozen=True)
class ApiFailure:
    """The StatefulSet could not be read; C{reason} is one line for the log."""

    reason: str


@dataclass(frozen=True)
class Decision:
    """The action, why (one line), and whether it is the fallback taken in doubt."""

    action: Action
    reason: str
    fallback: bool = False


def pod_ordinal(pod: str) -> tuple[str, int] | None:
    """C{("twistkv", 3)} for pod C{twistkv-3}: the StatefulSet's name and the pod's ordinal;
    C{None} for a name that no StatefulSet gives a pod."""
    match = _ORDINAL.match(pod)
    if match is None:
        return None
    return match["set"], int(match["ordinal"])


def decide(ordinal: int | None, api: StatefulSetView | ApiFailure) -> Decision:
    """LEAVE only when the StatefulSet says, for sure, that this pod is scaled away.

    Scaling to zero and deleting the StatefulSet stop the whole cluster (nobody is left to
    take the ranges): drain. Any doubt drains too: a wrong LEAVE decommissions a node that
    is expected back, a wrong drain only leaves a node down.
    """
    if isinstance(api, ApiFailure):
        return Decision(Action.DRAIN, f"cannot read the StatefulSet ({api.reason}); "
                        "draining only, never LEAVE in doubt", fallback=True)
    if ordinal is None:
        return Decision(Action.DRAIN, "the pod name has no StatefulSet ordinal; draining only",
                        fallback=True)
    if api.deleting:
        return Decision(Action.DRAIN, "the StatefulSet is being deleted: the whole cluster "
                        "stops, draining only")
    if api.replicas == 0:
        return Decision(Action.DRAIN, "the StatefulSet is scaled to 0: the whole cluster "
                        "stops, draining only")
    if ordinal >= api.replicas:
        return Decision(Action.LEAVE, f"ordinal {ordinal} >= spec.replicas {api.replicas}: "
                        "this pod is scaled away")
    return Decision(Action.DRAIN, f"ordinal {ordinal} < spec.replicas {api.replicas}: a "
                    "restart (update, eviction, deletion), not a scale-down; draining only")


def statefulset_view(document: Any) -> StatefulSetView:
    """The fields the hook needs from an API answer.

    @raise ValueError: the document is not an apps/v1 StatefulSet with an integer
        C{spec.replicas} (an API server always fills in the default).
    """
    if not isinstance(document, dict) or document.get("kind") != "StatefulSet":
        kind = document.get("kind") if isinstance(document, dict) else type(document).__name__
        raise ValueError(f"the answer is not a StatefulSet (kind {kind!r})")
    spec = document.get("spec")
    if not isinstance(spec, dict):
        spec = {}
    replicas = spec.get("replicas")
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        raise ValueError(f"the StatefulSet has no valid spec.replicas ({replicas!r})")
    metadata = document.get("metadata")
    deleting = isinstance(metadata, dict) and bool(metadata.get("deletionTimestamp"))
    template = spec.get("template")
    pod_spec = template.get("spec") if isinstance(template, dict) else None
    grace = pod_spec.get("terminationGracePeriodSeconds") if isinstance(pod_spec, dict) else None
    if not isinstance(grace, int) or isinstance(grace, bool) or grace < 0:
        grace = DEFAULT_GRACE
    return StatefulSetView(replicas=replicas, deleting=deleting, grace_seconds=grace)


# -- the Kubernetes API --------------------------------------------------------------------


def default_api_server(environ: dict[str, str] | None = None) -> str:
    """The API server as client-go's in-cluster config finds it: the
    C{KUBERNETES_SERVICE_HOST}/C{_PORT} variables (always set in a pod, even with
    C{enableServiceLinks: false}), else the C{kubernetes.default.svc} name."""
    env = os.environ if environ is None else environ
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if host and port:
        return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    return "https://kubernetes.default.svc"


def _api_message(body: bytes) -> str:
    """The C{message} of a Kubernetes Status answer, else the start of the body."""
    try:
        status = json.loads(body)
        if isinstance(status, dict) and isinstance(status.get("message"), str):
            return str(status["message"])
    except ValueError:
        pass
    return body[:200].decode("utf-8", errors="replace").strip() or "no details"


def read_statefulset(api_server: str, namespace: str, name: str, *,
                     service_account_dir: str | Path = SERVICE_ACCOUNT_DIR,
                     timeout: float = 5.0) -> StatefulSetView | ApiFailure:
    """GET the StatefulSet C{namespace}/C{name}, authenticated with the ServiceAccount token
    and verified against its CA. Never raises: every failure is an L{ApiFailure}."""
    sa_dir = Path(service_account_dir)
    try:
        token = (sa_dir / "token").read_text(encoding="utf-8").strip()
    except OSError as exc:
        return ApiFailure(f"no ServiceAccount token at {sa_dir / 'token'}: "
                          f"{exc.strerror or exc} (is automountServiceAccountToken off?)")
    try:
        context = ssl.create_default_context(cafile=str(sa_dir / "ca.crt"))
    except (OSError, ssl.SSLError) as exc:
        return ApiFailure(f"cannot load the CA {sa_dir / 'ca.crt'}: {exc}")
    url = (f"{api_server.rstrip('/')}/apis/apps/v1/namespaces/"
           f"{urllib.parse.quote(namespace, safe='')}/statefulsets/"
           f"{urllib.parse.quote(name, safe='')}")
    request = urllib.request.Request(
        url, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})
    # No proxies: the API server is always reached directly from a pod, and an
    # HTTPS_PROXY meant for the outside must not see the token.
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(request, timeout=timeout) as answer:
            body = answer.read(MAX_ANSWER)
    except urllib.error.HTTPError as exc:
        with exc:
            detail = _api_message(exc.read(MAX_ANSWER))
        return ApiFailure(f"GET {url}: HTTP {exc.code}: {detail}")
    except urllib.error.URLError as exc:
        return ApiFailure(f"GET {url}: {exc.reason}")
    except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, bad status lines
        return ApiFailure(f"GET {url}: {type(exc).__name__}: {exc or 'no details'}")
    try:
        return statefulset_view(json.loads(body))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return ApiFailure(f"GET {url}: {exc}")


# -- LEAVE and wait ------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaveResult:
    """Whether the node reported C{left}, and one line saying what happened."""

    left: bool
    message: str


def _plain(value: Any) -> Any:
    """A RESP3 reply with text keys (and text for bytes values)."""
    if isinstance(value, dict):
        return {text(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return text(value) if isinstance(value, bytes) else value


def _rebalance(client: redis.Redis) -> dict[str, Any]:
    """REBALANCE: the node's own ring status (C{status}: normal, leaving, left, ...) and the
    movement it drives (C{operation})."""
    reply = command(client, "REBALANCE")
    if not isinstance(reply, dict):
        raise ServerError(f"REBALANCE answered {type(reply).__name__}, not a map")
    snapshot: dict[str, Any] = _plain(reply)
    return snapshot


def _progress(operation: Any) -> str:
    """One line on a leave under way, from REBALANCE's C{operation}."""
    if not isinstance(operation, dict):
        return "leaving"
    try:
        return (f"leaving: {operation.get('phase')}, {float(operation['progress']):.0%}, "
                f"{int(operation['keys'])} keys and "
                f"{int(operation['bytes']) / 2**20:.1f} MiB streamed")
    except (KeyError, TypeError, ValueError):
        return f"leaving: {operation.get('phase')}"


def leave_and_wait(
    client: redis.Redis,
    address: Address | str,
    budget: float,
    *,
    log: Callable[[str], None],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    poll: float = POLL_INTERVAL,
    settle: float = LEFT_SETTLE,
    progress_every: float = PROGRESS_EVERY,
) -> LeaveResult:
    """Send LEAVE to the node and poll REBALANCE until it reports C{left}, for at most
    C{budget} seconds.

    LEAVE is (re)sent whenever the node says it is C{normal}: a refusal because another node
    is moving ranges (pods scaled away together leave one after the other) is retried, one
    because this node already leaves means it is under way. Once C{left}, the node lingers so
    the news spreads, then stops by itself: this waits up to C{settle} seconds for that, so
    the kubelet's SIGTERM does not cut the linger short. Several failed polls in a row before
    C{left} mean the node has stopped without leaving. While it leaves, its progress is
    logged every C{progress_every} seconds.
    """
    deadline = clock() + budget
    last: str | None = None
    left_at: float | None = None
    failures = 0
    waiting_for: str | None = None
    reported = clock()
    done = f"{address} left the cluster: its ranges are with their new owners"
    while True:
        operation = None
        try:
            snapshot = _rebalance(client)
            status, operation = text(snapshot.get("status")), snapshot.get("operation")
            failures = 0
        except (redis.RedisError, OSError, CLIError) as exc:
            if left_at is not None:
                return LeaveResult(True, done)  # it stopped by itself, as it should
            failures += 1
            if failures >= GONE_AFTER:
                if last in (None, "normal"):
                    return LeaveResult(False, f"{address} does not answer ({_one_line(exc)}) "
                                       "and never started leaving")
                return LeaveResult(False, f"{address} stopped answering; its last status "
                                   f"was {last}")
            status = last or ""
        else:
            if status != last:
                log(f"node status: {status}")
            last = status
        now = clock()
        if status == "left":
            left_at = now if left_at is None else left_at
            if now - left_at >= settle or now >= deadline:
                return LeaveResult(True, done)
        elif status == "normal":
            try:
                reply = text(command(client, "LEAVE"))
                log(f"LEAVE sent: {reply}")
                waiting_for = None
            except redis.ResponseError as exc:
                message = _one_line(exc)
                if "already running" in message:
                    pass  # our earlier LEAVE is under way (retracted while another moves)
                elif "another range movement" in message:
                    if waiting_for != message:
                        log(f"waiting to leave: {message}")
                    waiting_for = message
                else:
                    return LeaveResult(False, f"{address} refused LEAVE: {message}")
            except (redis.RedisError, OSError):
                pass  # counted by the next poll
        elif status == "leaving" and now - reported >= progress_every:
            log(_progress(operation))
            reported = now
        elif status in ("waiting", "joining", "removed"):
            return LeaveResult(False, f"{address} is {status}, not a ring member that can "
                               "leave")
        if left_at is None and now >= deadline:
            return LeaveResult(False, f"LEAVE did not finish within {budget:.0f} s (status "
                               f"{last})")
        sleep(poll)


def _one_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# -- the command ---------------------------------------------------------------------------


def add_parser(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("k8s-prestop",
            "Kubernetes preStop hook: LEAVE if this pod is scaled away, else drain "
            "(docs/kubernetes.md)")
    p.add_argument("--pod", metavar="NAME", default=None,
                   help="this pod's name [default: $POD_NAME, else the hostname]")
    p.add_argument("--namespace", metavar="NS", default=None,
                   help="[default: $POD_NAMESPACE, else the ServiceAccount's namespace file]")
    p.add_argument("--statefulset", metavar="NAME", default=None,
                   help="[default: the pod name without its -<ordinal>]")
    p.add_argument("--api-server", metavar="URL", default=None,
                   help="[default: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT, "
                        "else https://kubernetes.default.svc]")
    p.add_argument("--service-account-dir", metavar="DIR", default=SERVICE_ACCOUNT_DIR,
                   help="token, ca.crt and namespace [default: %(default)s]")
    p.add_argument("--api-timeout", type=float, metavar="SECONDS", default=5.0,
                   help="for the API request [default: %(default)s]")
    p.add_argument("--drain-seconds", type=float, metavar="SECONDS", default=3.0,
                   help="how long a pod that stays waits for the Services to stop sending "
                        "clients [default: %(default)s]")
    p.add_argument("--leave-timeout", type=float, metavar="SECONDS", default=None,
                   help="how long to wait for LEAVE [default: the pod template's "
                        f"terminationGracePeriodSeconds minus {GRACE_MARGIN:.0f}]")
    p.add_argument("--also-log", metavar="PATH", default=None,
                   help="also append each log line here; /proc/1/fd/1 puts them in "
                        "`kubectl logs` (a hook's own output is not kept there)")
    p.set_defaults(handler=run)


def _logger(also: str | None) -> Callable[[str], None]:
    def log(message: str) -> None:
        line = f"twistkv k8s-prestop: {message}"
        print(line, file=sys.stderr, flush=True)
        if also:
            try:
                with open(also, "a", encoding="utf-8") as sink:
                    sink.write(line + "\n")
            except OSError:
                pass  # stderr has it; the kubelet shows it when the hook fails

    return log


def _namespace(ns: argparse.Namespace) -> str | None:
    if ns.namespace:
        return str(ns.namespace)
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return (Path(ns.service_account_dir) / "namespace").read_text(encoding="utf-8").strip()
    except OSError:
        return None


def run(ns: argparse.Namespace) -> int:
    """Decide, then drain or leave; return the exit status (see L{EXIT_FALLBACK},
    L{EXIT_LEAVE_FAILED})."""
    started = time.monotonic()
    log = _logger(ns.also_log)
    pod = ns.pod or os.environ.get("POD_NAME") or socket.gethostname()
    parsed = pod_ordinal(pod)
    statefulset = ns.statefulset or (parsed[0] if parsed else None)
    namespace = _namespace(ns)
    api: StatefulSetView | ApiFailure
    if statefulset is None:
        api = ApiFailure(f"cannot tell the StatefulSet from the pod name {pod!r}")
    elif namespace is None:
        api = ApiFailure("no namespace: set POD_NAMESPACE or --namespace")
    else:
        api = read_statefulset(ns.api_server or default_api_server(), namespace, statefulset,
                               service_account_dir=ns.service_account_dir,
                               timeout=ns.api_timeout)
    decision = decide(parsed[1] if parsed else None, api)
    log(f"pod {pod}: {decision.action.value}: {decision.reason}")
    if decision.action is Action.DRAIN:
        time.sleep(max(0.0, ns.drain_seconds))
        return EXIT_FALLBACK if decision.fallback else 0
    assert isinstance(api, StatefulSetView)
    budget = ns.leave_timeout
    if budget is None:
        budget = api.grace_seconds - GRACE_MARGIN - (time.monotonic() - started)
    address = parse_address(ns.server)
    client = connect(address, timeout=ns.timeout)
    try:
        result = leave_and_wait(client, address, max(0.0, budget), log=log)
    finally:
        client.close()
    if result.left:
        log(result.message)
        return 0
    log(f"LEAVE did not complete: {result.message}. The node stops without handing its "
        f"ranges over: it is down, not gone. Scale back up, or run `twistkv remove {pod}` "
        "from a live pod once it is dead (docs/kubernetes.md).")
    return EXIT_LEAVE_FAILED
