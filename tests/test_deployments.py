"""The deployment files in deployments/ agree with the code, checked statically.

Nothing here builds an image, starts a container or talks to a Kubernetes
cluster (CI has no Docker engine and no cluster). Instead:

  - every node command line (the Dockerfile's ENTRYPOINT/CMD, each compose
    service, the StatefulSet's command/args) is checked to be the same
    ``twistd -n --pidfile= kvnode`` command the integration tests start nodes
    with, uses only options that exist in L{twistkv.tap.Options}, and is parsed
    by L{twistkv.tap.Options} itself: an option renamed or removed in tap.py
    fails these tests instead of a deployment;
  - every Kubernetes manifest is validated with kubernetes-validate against the
    schemas of Kubernetes L{KUBERNETES_VERSION}, strictly (an unknown or
    misspelt field is an error);
  - ports, probe paths, volumes, seeds and advertised addresses are
    cross-checked between the files and against the command lines;
  - the StatefulSet's preStop hook is parsed by the real CLI parser as
    ``twistkv k8s-prestop`` (LEAVE on scale-down, drain otherwise), and the
    RBAC that lets it read the StatefulSet grants nothing more.

Fast and without sockets, except that building the integration tests' own
command line (L{integration_argv}) reserves three free loopback ports.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from twistkv.tap import Options

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKER_DIR = REPO_ROOT / "deployments" / "docker"
DOCKERFILE = DOCKER_DIR / "Dockerfile"
COMPOSE_FILE = DOCKER_DIR / "docker-compose.yml"
K8S_DIR = REPO_ROOT / "deployments" / "k8s"
KIND_CONFIG = K8S_DIR / "kind-config.yaml"
KUSTOMIZATION = K8S_DIR / "kustomization.yaml"

#: Kubernetes version whose API schemas the manifests are validated against
#: (shipped by the pinned kubernetes-validate; kind's node images of 2025).
KUBERNETES_VERSION = "1.33.0"

#: The twistd part of every node command line, as in the integration tests.
TWISTD_PREFIX = ["twistd", "-n", "--pidfile=", "kvnode"]

#: Options the integration tests pass that a deployment may leave out, and why:
#: node-id comes from $NODE_ID; storage and fsync keep their defaults, which
#: must be what the integration tests ask for (checked).
SUPPLIED_ELSEWHERE = {"node-id", "storage", "fsync"}

_PLUGIN_ENV = ("PORT", "PEERS", "NODE_ID", "TWISTKV_CLUSTER_SECRET")


# -- reading command lines ------------------------------------------------------


def _parameters() -> dict[str, Any]:
    """Long name -> default of every kvnode option that takes a value."""
    rows: list[Any] = list(Options.optParameters)
    return {str(row[0]): row[2] for row in rows}


def _flags() -> set[str]:
    rows: list[Any] = list(Options.optFlags)
    return {str(row[0]) for row in rows} | {"help", "version"}


def option_values(args: list[str]) -> dict[str, str | None]:
    """The options in a kvnode argument list: name -> value (None for flags).

    Only long options are allowed in deployment files (they say what they
    mean); a short or unknown option fails here with the offending name.
    """
    parameters, flags = _parameters(), _flags()
    found: dict[str, str | None] = {}
    tokens = iter(args)
    for token in tokens:
        assert token.startswith("--"), f"{token!r}: use long --options in deployment files"
        name, eq, inline = token[2:].partition("=")
        if name in flags:
            assert not eq, f"--{name} is a flag and takes no value"
            found[name] = None
        elif name in parameters:
            found[name] = inline if eq else next(tokens)
        else:
            raise AssertionError(
                f"--{name} is not an option of twistd kvnode (twistkv.tap.Options); "
                f"known: {sorted(parameters) + sorted(flags)}"
            )
    return found


def kvnode_args(argv: list[str]) -> list[str]:
    """The arguments after ``twistd -n --pidfile= kvnode``, checking that prefix."""
    assert argv[: len(TWISTD_PREFIX)] == TWISTD_PREFIX, argv
    return argv[len(TWISTD_PREFIX):]


def tcp_port(endpoint: str) -> int:
    """The port of a ``tcp:PORT[:...]`` endpoint string."""
    fields = endpoint.split(":")
    assert fields[0] == "tcp" and fields[1].isdigit(), endpoint
    return int(fields[1])


def node_ports(args: list[str]) -> dict[str, int]:
    """client/http/peer ports of a kvnode argument list."""
    values = option_values(args)
    return {
        "client": tcp_port(values["listen"] or ""),
        "http": tcp_port(values["http"] or ""),
        "peer": tcp_port(values["peer-listen"] or ""),
    }


def parse_with_tap(
    args: list[str], env: Mapping[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Options:
    """Parse kvnode arguments with the real Options, as the node would.

    /data (the container's data volume) is mapped to a temporary directory,
    since parsing creates the data dir and stores the node id there.
    """
    for name in _PLUGIN_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "volume"
    mapped = [str(root) + a[len("/data"):] if a == "/data" or a.startswith("/data/") else a for a in args]
    options = Options()  # type: ignore[no-untyped-call]
    options.parseOptions(mapped)  # type: ignore[no-untyped-call]
    return options


@functools.cache
def _load_integration_conftest() -> Any:
    path = REPO_ROOT / "tests" / "integration" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_twistkv_integration_conftest", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def integration_argv(tmp_path: Path) -> list[str]:
    """The command line tests/integration/conftest.py starts a node with."""
    node = _load_integration_conftest().Node(tmp_path / "integration", "n1")
    argv: list[str] = node.argv()
    return argv


def assert_same_command_as_integration(argv: list[str], tmp_path: Path) -> None:
    """C{argv} is the integration tests' twistd kvnode command, give or take
    the options a deployment supplies another way (L{SUPPLIED_ELSEWHERE})."""
    reference = integration_argv(tmp_path)
    assert Path(reference[0]).name == argv[0] == "twistd"
    assert reference[1:4] == argv[1:4] == TWISTD_PREFIX[1:], (reference[:4], argv[:4])
    deployed = option_values(kvnode_args(argv))
    tested = option_values(reference[4:])
    missing = set(tested) - set(deployed)
    assert missing <= SUPPLIED_ELSEWHERE, f"options the integration tests use but {argv} lacks: {missing}"
    defaults = _parameters()
    for name in missing - {"node-id"}:
        assert tested[name] == defaults[name], (
            f"integration tests run --{name} {tested[name]}, deployments the default {defaults[name]}"
        )


def assert_listens_on_every_interface(config: Any) -> None:
    """A container's node must not bind to loopback only: other containers,
    pods and the published ports reach it on its network interface."""
    for endpoint in (config.listen, config.http, config.peer_listen):
        assert endpoint is not None and "interface=" not in endpoint, endpoint


# -- Dockerfile -------------------------------------------------------------------


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, rest = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"
    return instructions


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "FROM":
            stages.append([])
        stages[-1].append((keyword, rest))
    return stages


def _final(keyword: str) -> str:
    """The arguments of the last C{keyword} in the final stage."""
    found = [rest for k, rest in dockerfile_stages()[-1] if k == keyword]
    assert found, f"no {keyword} in the final stage of {DOCKERFILE}"
    return found[-1]


def image_argv() -> list[str]:
    """ENTRYPOINT + CMD of the image (both in JSON exec form)."""
    entrypoint = json.loads(_final("ENTRYPOINT"))
    cmd = json.loads(_final("CMD"))
    assert isinstance(entrypoint, list) and isinstance(cmd, list)
    return [*entrypoint, *cmd]


def image_uid() -> int:
    user = _final("USER").split(":")[0]
    assert user.isdigit(), "USER must be numeric for Kubernetes runAsNonRoot to verify it"
    return int(user)


def test_dockerfile_is_multistage_python_311_slim_building_the_wheel() -> None:
    """Both stages are python:3.11-slim; the first builds the wheel with
    ``pip wheel --no-deps`` from files that exist, the second installs it
    (with its dependencies) from the first."""
    stages = dockerfile_stages()
    assert len(stages) == 2
    build, final = stages
    assert build[0] == ("FROM", "python:3.11-slim AS build")
    assert final[0] == ("FROM", "python:3.11-slim")
    build_runs = " ".join(rest for k, rest in build if k == "RUN")
    assert "pip wheel --no-deps" in build_runs
    for keyword, rest in build:
        if keyword == "COPY":
            *sources, _dest = rest.split()
            for source in sources:
                assert (REPO_ROOT / source).exists(), f"COPY {source}: not in the repo"
    assert any(k == "COPY" and rest.startswith("--from=build ") for k, rest in final)
    install = " ".join(rest for k, rest in final if k == "RUN")
    assert re.search(r"pip install \S*twistkv-\*\.whl", install), install
    assert "--no-deps" not in install
    assert (DOCKER_DIR / "Dockerfile.dockerignore").is_file()


def test_dockerfile_runs_as_non_root_with_a_data_volume_and_the_node_ports() -> None:
    """The image runs as a numeric non-root user, declares /data a volume (the
    command's --data-dir) and exposes exactly the command's three ports."""
    assert image_uid() != 0
    assert "/data" in json.loads(_final("VOLUME"))
    args = kvnode_args(image_argv())
    values = option_values(args)
    assert values["data-dir"] == "/data"
    exposed = {int(port) for port in _final("EXPOSE").split()}
    assert exposed == set(node_ports(args).values()) == {7379, 8379, 7380}


def test_dockerfile_command_is_the_integration_tests_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENTRYPOINT + CMD is ``twistd -n --pidfile= kvnode`` with options that all
    exist, that twistkv.tap.Options accepts, and that listen on every interface
    (a container must not bind to loopback)."""
    argv = image_argv()
    assert_same_command_as_integration(argv, tmp_path)
    config = parse_with_tap(kvnode_args(argv), {"NODE_ID": "n1"}, tmp_path, monkeypatch).config
    assert config.node_id == "n1"
    assert_listens_on_every_interface(config)


def test_dockerfile_healthcheck_gets_health_on_the_http_port() -> None:
    """HEALTHCHECK runs python's urllib (slim has no curl) against
    127.0.0.1:<--http port>/health, so it follows the command's HTTP port."""
    healthcheck = _final("HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD ")
    assert "--timeout=" in options and "--interval=" in options
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"]
    http_port = node_ports(kvnode_args(image_argv()))["http"]
    assert f"http://127.0.0.1:{http_port}/health" in argv[2]
    assert "urllib.request" in argv[2]


# -- docker compose ---------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return document


def _interpolate(value: str) -> str:
    """Compose's ${NAME:-default} with NAME unset (the tests' environment)."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", value)


def service_env(service: Mapping[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    assert isinstance(environment, dict), "use the mapping form of environment"
    return {name: _interpolate(str(value)) for name, value in environment.items()}


def service_argv(service: Mapping[str, Any]) -> list[str]:
    """What the container runs: its entrypoint (else the image's) + command."""
    if "entrypoint" in service:
        return [*service["entrypoint"], *service.get("command", [])]
    return [*json.loads(_final("ENTRYPOINT")), *service.get("command", [])]


def published(service: Mapping[str, Any]) -> dict[int, int]:
    """container port -> host port, from "[ip:]host:container" strings."""
    ports: dict[int, int] = {}
    for spec in service.get("ports", []):
        assert isinstance(spec, str), spec
        *_, host, container = spec.split(":")
        ports[int(container)] = int(host)
    return ports


EXPECTED_PUBLISHED = {
    "n1": {"client": 7001, "http": 8001},
    "n2": {"client": 7002, "http": 8002},
    "n3": {"client": 7003, "http": 8003},
}


def test_compose_builds_the_image_from_the_repo_root(compose: dict[str, Any]) -> None:
    """n1..n3 all build deployments/docker/Dockerfile with the repo root as
    context, into one image tag."""
    assert set(compose["services"]) == {"n1", "n2", "n3"}
    images = set()
    for service in compose["services"].values():
        build = service["build"]
        context = (COMPOSE_FILE.parent / build["context"]).resolve()
        assert context == REPO_ROOT
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE
        images.add(service["image"])
    assert len(images) == 1


def test_compose_publishes_client_and_http_ports_only(compose: dict[str, Any]) -> None:
    """n1 publishes 7001/8001, n2 7002/8002, n3 7003/8003 for its client and
    HTTP ports (the container ports of the command); the peer port stays on
    the compose network."""
    for name, service in compose["services"].items():
        ports = node_ports(kvnode_args(service_argv(service)))
        assert published(service) == {
            ports["client"]: EXPECTED_PUBLISHED[name]["client"],
            ports["http"]: EXPECTED_PUBLISHED[name]["http"],
        }


def test_compose_gives_each_node_its_own_named_volume(compose: dict[str, Any]) -> None:
    """Each service mounts its own top-level named volume at the command's
    --data-dir, so data and node ids survive `down`/`up` and are never shared."""
    declared = set(compose["volumes"])
    used = []
    for service in compose["services"].values():
        data_dir = option_values(kvnode_args(service_argv(service)))["data-dir"]
        (mount,) = service["volumes"]
        volume, target = mount.split(":")
        assert target == data_dir
        assert volume in declared
        used.append(volume)
    assert len(set(used)) == len(used) == 3


def test_compose_healthchecks_get_health(compose: dict[str, Any]) -> None:
    """Every service has a healthcheck that fetches /health on its HTTP port."""
    for service in compose["services"].values():
        check = service["healthcheck"]
        http_port = node_ports(kvnode_args(service_argv(service)))["http"]
        assert check["test"][0] == "CMD"
        assert f"http://127.0.0.1:{http_port}/health" in " ".join(check["test"])
        assert {"interval", "timeout", "retries"} <= set(check)


def test_compose_wires_node_ids_advertise_and_peers(compose: dict[str, Any]) -> None:
    """NODE_ID is the service name; each node advertises <service>:<peer port>
    (its name on the compose network); n1 is the first node (no PEERS) and n2,
    n3 seed from exactly n1's advertised address."""
    services = compose["services"]
    advertised = {}
    for name, service in services.items():
        args = kvnode_args(service_argv(service))
        assert service_env(service)["NODE_ID"] == name
        assert service.get("hostname", name) == name
        advertised[name] = option_values(args)["advertise"]
        assert advertised[name] == f"{name}:{node_ports(args)['peer']}"
    assert service_env(services["n1"]).get("PEERS", "") == ""
    for name in ("n2", "n3"):
        assert service_env(services[name])["PEERS"] == advertised["n1"]


@pytest.mark.parametrize("name", ["n1", "n2", "n3"])
def test_compose_command_is_the_integration_tests_command(
    compose: dict[str, Any], name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service's full command line (image entrypoint + command) is the
    integration tests' twistd kvnode command, and twistkv.tap.Options parses it
    with the service's environment into the expected node id and seeds,
    listening on every interface."""
    service = compose["services"][name]
    argv = service_argv(service)
    assert_same_command_as_integration(argv, tmp_path)
    env = service_env(service)
    config = parse_with_tap(kvnode_args(argv), env, tmp_path, monkeypatch).config
    assert config.node_id == name
    assert config.seeds == tuple(s for s in env.get("PEERS", "").split(",") if s)
    assert config.advertise == f"{name}:7380"
    assert config.cluster_secret is None
    assert_listens_on_every_interface(config)


# -- Kubernetes -------------------------------------------------------------------


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S_DIR.glob("*.yaml") if p not in (KIND_CONFIG, KUSTOMIZATION))


def k8s_documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in k8s_files():
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document is not None:
                yield path, document


def _doc_id(item: tuple[Path, dict[str, Any]]) -> str:
    path, document = item
    return f"{path.name}:{document['kind']}/{document['metadata']['name']}"


K8S_DOCUMENTS = list(k8s_documents())


def k8s_object(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for _, d in K8S_DOCUMENTS if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def statefulset() -> dict[str, Any]:
    return k8s_object("StatefulSet")


def container() -> dict[str, Any]:
    (only,) = statefulset()["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = only
    return result


def container_env() -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = container()["env"]
    return env


def expand(value: str, variables: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command, args and env values."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: variables[m.group(1)], value)


def pod_env(pod: str, namespace: str = "demo") -> dict[str, str]:
    """The container's environment as Kubernetes would give it to pod C{pod}."""
    fields = {"metadata.name": pod, "metadata.namespace": namespace}
    env: dict[str, str] = {}
    for entry in container_env():
        if "value" in entry:
            env[entry["name"]] = expand(entry["value"], env)
        elif "fieldRef" in entry.get("valueFrom", {}):
            env[entry["name"]] = fields[entry["valueFrom"]["fieldRef"]["fieldPath"]]
        # secretKeyRef: optional, absent in these tests
    return env


def pod_argv(pod: str, namespace: str = "demo") -> list[str]:
    env = pod_env(pod, namespace)
    return [expand(a, env) for a in [*container()["command"], *container()["args"]]]


def container_port(name_or_number: str | int) -> int:
    """A containerPort by name (or number, checked to be declared)."""
    for port in container()["ports"]:
        if name_or_number in (port["name"], port["containerPort"]):
            number: int = port["containerPort"]
            return number
    raise AssertionError(f"port {name_or_number!r} is not declared by the container")


def test_kustomization_lists_every_manifest() -> None:
    """`kubectl apply -k deployments/k8s/` applies every manifest file here
    (and not kind-config.yaml, which is kind's, not Kubernetes')."""
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text(encoding="utf-8"))
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(p.name for p in k8s_files())


@pytest.mark.parametrize("item", K8S_DOCUMENTS, ids=[_doc_id(i) for i in K8S_DOCUMENTS])
def test_manifest_is_valid_kubernetes(item: tuple[Path, dict[str, Any]]) -> None:
    """The manifest validates against the Kubernetes KUBERNETES_VERSION API
    schemas in strict mode: right types, required fields, no unknown fields."""
    _path, document = item
    try:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(str(p) for p in exc.path)
        pytest.fail(f"{_doc_id(item)}: {where}: {exc.message}")


def test_manifests_cover_the_deployment() -> None:
    """There are a StatefulSet, a headless peer Service, client and HTTP
    Services, a PodDisruptionBudget and the preStop hook's ServiceAccount, Role
    and RoleBinding, and every Service and the PDB select the StatefulSet's
    pods."""
    kinds = sorted(d["kind"] for _, d in K8S_DOCUMENTS)
    assert kinds == ["PodDisruptionBudget", "Role", "RoleBinding", "Service", "Service",
                     "Service", "ServiceAccount", "StatefulSet"]
    labels = statefulset()["spec"]["template"]["metadata"]["labels"]
    assert statefulset()["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for _, document in K8S_DOCUMENTS:
        if document["kind"] == "Service":
            selector = document["spec"]["selector"]
        elif document["kind"] == "PodDisruptionBudget":
            selector = document["spec"]["selector"]["matchLabels"]
        else:
            continue
        assert selector.items() <= labels.items(), document["metadata"]["name"]


def test_headless_service_gives_pods_stable_peer_names() -> None:
    """The StatefulSet's serviceName is a headless Service that publishes
    not-ready pods (peers must find each other before anyone is Ready) on the
    command's peer port."""
    spec = statefulset()["spec"]
    headless = k8s_object("Service", spec["serviceName"])["spec"]
    assert headless["clusterIP"] == "None"
    assert headless["publishNotReadyAddresses"] is True
    peer = node_ports(kvnode_args(pod_argv("twistkv-0")))["peer"]
    (port,) = headless["ports"]
    assert port["port"] == peer == container_port(port["targetPort"])


@pytest.mark.parametrize(
    ("name", "role"), [("twistkv", "client"), ("twistkv-http", "http")]
)
def test_client_services_reach_the_right_container_ports(name: str, role: str) -> None:
    """The client Service (7379) and HTTP Service (8379) forward to the
    container ports the command listens on."""
    ports = node_ports(kvnode_args(pod_argv("twistkv-0")))
    service = k8s_object("Service", name)["spec"]
    assert service.get("clusterIP") != "None"
    (port,) = service["ports"]
    assert port["port"] == ports[role] == container_port(port["targetPort"])
    assert container_port(role) == ports[role]


def test_statefulset_shape() -> None:
    """3 replicas, a deliberate pod management policy, a grace period, and a
    PodDisruptionBudget allowing one pod down (quorum 2 of 3 stays up)."""
    spec = statefulset()["spec"]
    assert spec["replicas"] == 3
    assert spec["podManagementPolicy"] in ("Parallel", "OrderedReady")
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] >= 10
    assert k8s_object("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("pod", ["twistkv-0", "twistkv-2"])
def test_statefulset_command_is_the_integration_tests_command(
    pod: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After Kubernetes' $(VAR) expansion, the container runs the integration
    tests' twistd kvnode command, and twistkv.tap.Options parses it into node
    id = pod name, advertise = the pod's stable DNS name and seeds = pod 0,
    listening on every interface."""
    argv = pod_argv(pod)
    assert_same_command_as_integration(argv, tmp_path)
    config = parse_with_tap(kvnode_args(argv), pod_env(pod), tmp_path, monkeypatch).config
    service = statefulset()["spec"]["serviceName"]
    assert config.node_id == pod
    assert_listens_on_every_interface(config)
    assert config.advertise == f"{pod}.{service}.demo.svc.cluster.local:7380"
    first = f"{statefulset()['metadata']['name']}-0"
    assert config.seeds == (f"{first}.{service}.demo.svc.cluster.local:7380",)


def test_statefulset_variables_are_defined_before_use() -> None:
    """Every $(VAR) in args refers to a container env var, and every $(VAR) in
    an env value to one defined earlier (Kubernetes leaves others unexpanded)."""
    names = [entry["name"] for entry in container_env()]
    for i, entry in enumerate(container_env()):
        for ref in re.findall(r"\$\(([^)]*)\)", entry.get("value", "")):
            assert ref in names[:i], f"{entry['name']} uses $({ref}) before it is defined"
    for arg in [*container()["command"], *container()["args"]]:
        for ref in re.findall(r"\$\(([^)]*)\)", arg):
            assert ref in names, f"{arg} uses undefined $({ref})"
    by_name = {entry["name"]: entry for entry in container_env()}
    assert by_name["NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert by_name["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_statefulset_probes_hit_the_real_ports_and_paths() -> None:
    """Readiness GETs /ready (joined and healthy), startup GETs /health, on the command's
    --http port; liveness
    GETs /health there or opens the --listen port; thresholds leave a live node
    at least 30 s to answer before it is restarted."""
    ports = node_ports(kvnode_args(pod_argv("twistkv-0")))
    spec = container()
    readiness = spec["readinessProbe"]
    assert readiness["httpGet"]["path"] == "/ready"
    assert container_port(readiness["httpGet"]["port"]) == ports["http"]
    if "startupProbe" in spec:
        assert spec["startupProbe"]["httpGet"]["path"] == "/health"
        assert container_port(spec["startupProbe"]["httpGet"]["port"]) == ports["http"]
    liveness = spec["livenessProbe"]
    if "httpGet" in liveness:
        assert liveness["httpGet"]["path"] == "/health"
        assert container_port(liveness["httpGet"]["port"]) == ports["http"]
    else:
        assert container_port(liveness["tcpSocket"]["port"]) == ports["client"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 30
    for probe in (readiness, liveness):
        assert probe["timeoutSeconds"] >= 1


def test_statefulset_storage_security_and_resources() -> None:
    """The data volume comes from a volumeClaimTemplate mounted at --data-dir;
    the pod runs as the image's non-root uid; CPU and memory have requests and
    limits."""
    spec = statefulset()["spec"]
    data_dir = option_values(kvnode_args(pod_argv("twistkv-0")))["data-dir"]
    mounts = {m["mountPath"]: m["name"] for m in container()["volumeMounts"]}
    templates = {t["metadata"]["name"] for t in spec["volumeClaimTemplates"]}
    assert mounts[data_dir or ""] in templates
    pod_security = spec["template"]["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] == image_uid()
    assert pod_security["fsGroup"] == image_uid()
    assert container()["securityContext"]["allowPrivilegeEscalation"] is False
    resources = container()["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind])


def prestop_command() -> list[str]:
    command: list[str] = container()["lifecycle"]["preStop"]["exec"]["command"]
    return command


def test_statefulset_prestop_is_the_k8s_prestop_entry_point() -> None:
    """preStop runs `twistkv k8s-prestop` (LEAVE only when scaled away, else drain), not a
    shell line: the real CLI parser accepts its arguments and dispatches them to
    twistkv.cli._k8s.run, it talks to the node's own client port, drains for a few seconds,
    and logs to the container's stdout. It finds the pod and namespace in the env vars the
    container defines (no $(VAR) needed: an exec hook gets the container's environment)."""
    from twistkv.cli import _k8s
    from twistkv.cli._main import parse

    command = prestop_command()
    assert command[:2] == ["twistkv", "k8s-prestop"], command
    ns = parse(command[1:])
    assert ns.command == "k8s-prestop" and ns.handler is _k8s.run
    ports = node_ports(kvnode_args(pod_argv("twistkv-0")))
    assert ns.server == f"127.0.0.1:{ports['client']}"
    assert 0 < ns.drain_seconds <= 10
    assert ns.also_log == "/proc/1/fd/1"
    assert ns.leave_timeout is None  # derived from the grace period read from the API
    assert ns.service_account_dir == _k8s.SERVICE_ACCOUNT_DIR
    assert ns.pod is None and ns.namespace is None and ns.statefulset is None
    env = pod_env("twistkv-3")
    assert env["POD_NAME"] == "twistkv-3" and env["POD_NAMESPACE"] == "demo"
    assert not any("$(" in arg for arg in command)
    assert _k8s.pod_ordinal(env["POD_NAME"]) == (statefulset()["metadata"]["name"], 3)


def test_prestop_can_read_its_statefulset_and_nothing_more() -> None:
    """The pods run as a ServiceAccount whose token is mounted; a namespaced Role grants
    exactly `get` on this StatefulSet (least privilege: no list/watch/write, no other
    resource, no ClusterRole), and a RoleBinding gives it to that ServiceAccount."""
    pod_spec = statefulset()["spec"]["template"]["spec"]
    account = pod_spec["serviceAccountName"]
    assert pod_spec.get("automountServiceAccountToken", True) is True
    assert k8s_object("ServiceAccount", account)
    binding = k8s_object("RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": binding["roleRef"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account}]
    role = k8s_object("Role", binding["roleRef"]["name"])
    assert role["rules"] == [{"apiGroups": ["apps"], "resources": ["statefulsets"],
                              "resourceNames": [statefulset()["metadata"]["name"]],
                              "verbs": ["get"]}]
    kinds = {d["kind"] for _, d in K8S_DOCUMENTS}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}
    for _, document in K8S_DOCUMENTS:
        assert "namespace" not in document["metadata"], "manifests name no namespace"


def test_grace_period_leaves_time_to_leave_but_liveness_restarts_fast() -> None:
    """The pod's grace period bounds a scale-down's LEAVE (the hook waits it minus
    GRACE_MARGIN): at least a minute of streaming. A liveness restart does not wait for
    it: the probe has its own short grace period."""
    from twistkv.cli import _k8s

    pod_spec = statefulset()["spec"]["template"]["spec"]
    grace = pod_spec["terminationGracePeriodSeconds"]
    assert grace - _k8s.GRACE_MARGIN >= 60
    liveness_grace = container()["livenessProbe"]["terminationGracePeriodSeconds"]
    assert 0 < liveness_grace <= 60 < grace

def test_kind_config_is_a_kind_cluster() -> None:
    """kind-config.yaml is a kind v1alpha4 Cluster with a control plane and
    workers for the pods."""
    config = yaml.safe_load(KIND_CONFIG.read_text(encoding="utf-8"))
    assert config["kind"] == "Cluster"
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    roles = [node["role"] for node in config["nodes"]]
    assert roles.count("control-plane") == 1 and roles.count("worker") >= 1


# -- docs -------------------------------------------------------------------------


@pytest.mark.parametrize("doc", ["docs/kubernetes.md", "docs/multi-laptop.md"])
def test_docs_name_only_existing_deployment_files(doc: str) -> None:
    """Every deployments/... path the operator docs mention exists."""
    text = (REPO_ROOT / doc).read_text(encoding="utf-8")
    paths = set(re.findall(r"deployments/[A-Za-z0-9_./-]*[A-Za-z0-9_-]", text))
    assert paths
    for path in sorted(paths):
        assert (REPO_ROOT / path).exists(), f"{doc} mentions {path}, which does not exist"
