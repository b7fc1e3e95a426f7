"""The twistd plugin module: discoverable, and harmless to import.

twistd imports every plugin module to list them, before it has installed
the reactor the user asked for (``twistd --reactor=...``); a plugin that
imports C{twisted.internet.reactor} at import time installs the default
reactor too early and breaks that choice. Each check runs in a fresh
interpreter so this test process's own imports cannot hide a problem.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _python(code: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PORT", "PEERS", "NODE_ID")}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=60,
    )


def test_plugin_import_does_not_import_the_reactor() -> None:
    """Importing twisted.plugins.kvnode (and reading its tap options module) leaves
    twisted.internet.reactor unimported. Fails if the plugin or twistkv.tap imports it.
    """
    done = _python(
        "import sys\n"
        "import twisted.plugins.kvnode as plugin\n"
        "print('after-plugin', 'twisted.internet.reactor' in sys.modules)\n"
        "options = plugin.kvnode.options()\n"
        "print('after-options', 'twisted.internet.reactor' in sys.modules)\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["after-plugin False", "after-options False"]


def test_plugin_is_this_trees_file() -> None:
    """The kvnode plugin module imported is the one in this repo's twisted/plugins/."""
    done = _python("import twisted.plugins.kvnode as p; print(p.__file__)")
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).resolve() == REPO_ROOT / "twisted" / "plugins" / "kvnode.py"


def test_get_plugins_finds_kvnode() -> None:
    """twisted.plugin.getPlugins(IServiceMaker) lists exactly one `kvnode`, pointing at twistkv.tap."""
    done = _python(
        "from twisted.application.service import IServiceMaker\n"
        "from twisted.plugin import getPlugins\n"
        "found = [p for p in getPlugins(IServiceMaker) if p.tapname == 'kvnode']\n"
        "print(len(found), found[0].module if found else '-')\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "twistkv.tap"]


def test_twisted_plugins_dir_has_no_init() -> None:
    """twisted/ and twisted/plugins/ in this repo have no __init__.py: one there would shadow
    Twisted's own package instead of adding a drop-in plugin.
    """
    assert not (REPO_ROOT / "twisted" / "__init__.py").exists()
    assert not (REPO_ROOT / "twisted" / "plugins" / "__init__.py").exists()
