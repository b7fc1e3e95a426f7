"""The built wheel is a working product on its own: plugin, package and web assets.

The wheel is installed into a fresh venv and run from a directory outside
the repo, so nothing can come from the source tree.

Why a .pth file instead of installing the dependencies: installing Twisted,
rocksdict & co. into the fresh venv would download them (slow, and needs
the network). Instead the wheel is installed with ``--no-deps`` and a
``.pth`` file appends *this* environment's site-packages to the new venv's
``sys.path``. The new venv's own site-packages comes first, so ``twistkv`` and
``twisted/plugins/kvnode.py`` are the wheel's; only third-party libraries come
from outside. A ``.pth`` file only adds a path: ``.pth`` files inside that path
(such as an editable install of this repo) are not processed, so the tree
cannot leak in that way either; a test below checks where twistkv is imported
from. The venv is made ``--without-pip`` and this environment's pip installs
into it (``pip --python``), which saves the ensurepip step. Twisted's
``twistd`` script is not in the new venv (Twisted is not installed there), so
the test writes the same three-line launcher pip would have generated.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import sysconfig
import urllib.request
import zipfile
from pathlib import Path

import pytest

from .conftest import REPO_ROOT, NodeFactory

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class WheelInstall:
    """A wheel and a fresh venv it is installed in."""

    def __init__(self, wheel: Path, venv: Path, outside: Path) -> None:
        self.wheel = wheel
        self.venv = venv
        self.python = venv / "bin" / "python"
        self.twistd = venv / "bin" / "twistd"
        self.outside = outside

    def names(self) -> list[str]:
        with zipfile.ZipFile(self.wheel) as zf:
            return zf.namelist()

    def read(self, name: str) -> bytes:
        with zipfile.ZipFile(self.wheel) as zf:
            return zf.read(name)

    def env(self) -> dict[str, str]:
        """An environment with nothing pointing at the repo."""
        import os

        env = {
            k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PORT", "PEERS", "NODE_ID")
        }
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv), cwd=self.outside, env=self.env(), capture_output=True, text=True,
            timeout=timeout, stdin=subprocess.DEVNULL,
        )


def _run(argv: list[str], cwd: Path, timeout: float = 300) -> None:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> WheelInstall:
    """Build the wheel from the repo and install it (no deps) into a fresh venv."""
    base = tmp_path_factory.mktemp("wheel")
    wheelhouse = base / "wheelhouse"
    outside = base / "elsewhere"
    outside.mkdir()
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheelhouse)]
    if importlib.util.find_spec("hatchling") is not None:
        # Build with this environment's hatchling: no download of the build backend.
        build.append("--no-build-isolation")
    _run([*build, str(REPO_ROOT)], cwd=outside)
    wheels = sorted(wheelhouse.glob("twistkv-*.whl"))
    assert len(wheels) == 1, wheels

    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=outside, timeout=120)
    venv_python = venv / "bin" / "python"
    _run(
        [sys.executable, "-m", "pip", "--python", str(venv_python), "install", "-q",
         "--no-deps", "--no-index", str(wheels[0])],
        cwd=outside,
    )
    purelib = subprocess.run(
        [str(venv_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, cwd=outside,
    ).stdout.strip()
    outer = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(purelib) / "zz_outer_env_deps.pth").write_text("\n".join(sorted(outer)) + "\n")
    twistd = venv / "bin" / "twistd"
    twistd.write_text(
        f"#!{venv_python}\nimport sys\nfrom twisted.scripts.twistd import run\nsys.exit(run())\n"
    )
    twistd.chmod(0o755)
    return WheelInstall(wheels[0], venv, outside)


def test_wheel_layout(installed: WheelInstall) -> None:
    """The wheel ships the twistd plugin and the web assets, and does not claim the
    `twisted` or `twisted.plugins` packages (an __init__.py there would shadow Twisted's own).
    """
    names = installed.names()
    assert "twisted/plugins/kvnode.py" in names
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert not [n for n in names if n.endswith("dropin.cache")]
    assert "twistkv/tap.py" in names
    assert [n for n in names if n.startswith("twistkv/web/static/") and not n.endswith("/")], (
        "no files under twistkv/web/static/ in the wheel"
    )
    assert [n for n in names if n.startswith("twistkv/web/templates/")], (
        "no templates in the wheel"
    )


def test_installed_twistkv_comes_from_the_venv(installed: WheelInstall) -> None:
    """From outside the repo, twistkv and the kvnode plugin import from the new venv,
    and Twisted's plugin system finds kvnode there.
    """
    code = (
        "import twistkv, twisted.plugins.kvnode as p\n"
        "from twisted.application.service import IServiceMaker\n"
        "from twisted.plugin import getPlugins\n"
        "print(twistkv.__file__); print(p.__file__)\n"
        "print(sorted(m.tapname for m in getPlugins(IServiceMaker)))\n"
    )
    done = installed.run(str(installed.python), "-c", code)
    assert done.returncode == 0, done.stderr
    twistkv_file, plugin_file, tapnames = done.stdout.splitlines()
    assert Path(twistkv_file).is_relative_to(installed.venv), twistkv_file
    assert Path(plugin_file).is_relative_to(installed.venv), plugin_file
    assert "'kvnode'" in tapnames


def test_installed_twistd_kvnode_help(installed: WheelInstall) -> None:
    """`twistd kvnode --help` from the wheel lists the node's options."""
    done = installed.run(str(installed.twistd), "kvnode", "--help")
    assert done.returncode == 0, done.stderr
    for option in ("--listen", "--http", "--peer-listen", "--data-dir", "--log-dir",
                   "--storage", "--fsync", "--node-id", "--max-value-bytes"):
        assert option in done.stdout, f"{option} missing from kvnode --help"


def test_installed_node_serves_resp_and_web(installed: WheelInstall, node_factory: NodeFactory) -> None:
    """A node started from the wheel install answers PING over RESP, serves HTML at /
    and serves a static asset from the wheel byte for byte.
    """
    node = node_factory.create(
        "wheel", twistd=installed.twistd, cwd=installed.outside, env=installed.env()
    )
    node.start(timeout=30)  # start() waits for PONG on the client port
    client = node.client()
    assert client.set("from-wheel", "yes") is True
    assert client.get("from-wheel") == b"yes"

    with urllib.request.urlopen(node.http_url + "/", timeout=10) as response:
        assert response.status == 200
        assert response.headers.get_content_type() == "text/html"
        assert b"<html" in response.read().lower()

    static = sorted(
        n for n in installed.names()
        if n.startswith("twistkv/web/static/") and not n.endswith("/")
    )
    assert static, "no static assets in the wheel"
    name = static[0]
    url = f"{node.http_url}/static/{name.removeprefix('twistkv/web/static/')}"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.read() == installed.read(name)
