"""The dashboard in a real headless Chromium, watching a real 3-node cluster fail and heal.

The classroom scenario of the dashboard issue: open one node's dashboard, SIGKILL another
node, and watch the page (updated live over Server-Sent Events, no reload) show it turn
suspect, then dead, with writes hinted for it; restart it and watch it come back alive and
its hints delivered. A screenshot of each step is saved under C{artifacts/screenshots/}.

Chromium is driven through chromedriver's W3C WebDriver HTTP API with the standard library
(no Selenium): Debian's C{chromium} and C{chromium-driver} packages are all it needs, and
the test is skipped with the reason when they are missing.

test-case-name: tests.integration.test_dashboard_browser
"""

from __future__ import annotations

import base64
import json
import shutil
import signal
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import REPO_ROOT, NodeFactory, free_port, wait_cluster, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCREENSHOTS = REPO_ROOT / "artifacts" / "screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)
#: The flags DESIGN.md §5 asks for (plus the window the issue asks the page to suit).
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    "--window-size=1280,720", "--disable-dev-shm-usage",
]


class WebDriver:
    """The few W3C WebDriver commands this test needs, spoken to chromedriver over HTTP."""

    def __init__(self, profile_dir: Path) -> None:
        assert CHROMIUM is not None and CHROMEDRIVER is not None
        self.port = free_port()
        self.process = subprocess.Popen(
            [CHROMEDRIVER, f"--port={self.port}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        wait_until(lambda: self._call("GET", "/status")["ready"], 15, "chromedriver ready")
        capabilities = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [*CHROMIUM_ARGS, f"--user-data-dir={profile_dir}"],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}}
        self.session = self._call("POST", "/session", capabilities)["sessionId"]

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())["value"]
        except urllib.error.HTTPError as error:
            raise AssertionError(f"WebDriver {method} {path}: {error.read()!r}") from None

    def command(self, method: str, path: str, body: Any = None) -> Any:
        return self._call(method, f"/session/{self.session}{path}", body)

    def get(self, url: str) -> None:
        self.command("POST", "/url", {"url": url})

    def js(self, script: str, *args: Any) -> Any:
        return self.command("POST", "/execute/sync", {"script": script, "args": list(args)})

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / name
        path.write_bytes(base64.b64decode(self.command("GET", "/screenshot")))
        return path

    def screenshots(self, name: str) -> None:
        """The top of the page (verdict, members, ring), then its timeline and traffic."""
        self.js("window.scrollTo(0, 0)")
        self.screenshot(f"{name}.png")
        self.js("document.querySelector('[data-part=timeline]').scrollIntoView()")
        self.screenshot(f"{name}-timeline.png")
        self.js("window.scrollTo(0, 0)")

    def browser_log(self) -> list[dict[str, Any]]:
        """The page's console messages and errors (chromedriver's legacy log endpoint)."""
        entries: list[dict[str, Any]] = self.command("POST", "/se/log", {"type": "browser"})
        return entries

    def quit(self) -> None:
        try:
            self._call("DELETE", f"/session/{self.session}")
        except Exception:  # noqa: BLE001 - best effort during teardown
            pass
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("headless Chromium is not installed: apt-get install -y chromium chromium-driver "
                    "(scripts/system-deps.sh)")
    with tempfile.TemporaryDirectory(prefix="twistkv-chromium-") as profile:
        driver = WebDriver(Path(profile))
        try:
            yield driver
        finally:
            driver.quit()


#: What the page shows, read from the live DOM.
_STATE_JS = """
const row = document.querySelector('tr.member[data-node="' + arguments[0] + '"]');
const verdict = document.getElementById('verdict');
const timeline = Array.from(document.querySelectorAll('#timeline li')).map(li => li.textContent.trim());
const live = document.getElementById('live');
return {
  state: row ? row.querySelector('.badge').textContent.trim() : null,
  verdict: verdict ? verdict.textContent.trim() : null,
  timeline: timeline,
  live: live ? live.textContent.trim() : null,
  members: document.querySelectorAll('tr.member').length,
  arcs: document.querySelectorAll('#ring-svg path.arc').length,
  leave: document.querySelectorAll('#demo-form button[data-action="leave"]').length,
};
"""


def _seen(driver: WebDriver, node: str) -> dict[str, Any]:
    seen: dict[str, Any] = driver.js(_STATE_JS, node)
    return seen


def _timeline_has(seen: dict[str, Any], text: str) -> bool:
    return any(text in entry for entry in seen["timeline"])


def test_teacher_kills_a_node_and_the_class_watches_it_heal(
        node_factory: NodeFactory, browser: WebDriver) -> None:
    """3 alive → SIGKILL n3 → suspect → dead (writes hinted) → restart → alive, hints delivered;
    all seen on n1's dashboard without a reload, and without console errors."""
    nodes = node_factory.cluster(3)
    wait_cluster(nodes)
    n1, _, n3 = nodes

    browser.get(n1.http_url + "/")
    seen = wait_until(lambda: (s := _seen(browser, "n3"))["live"] == "live"
                      and s["verdict"] == "all 3 nodes alive" and s, 20,
                      "the dashboard shows 3 alive nodes, live")
    assert seen["members"] == 3 and seen["arcs"] > 3
    assert seen["leave"] == 0, "no demo controls without --admin-token"
    browser.screenshots("01-three-alive")

    client = n1.client()
    for i in range(20):
        client.set(f"before:{i}", "x")

    n3.kill(signal.SIGKILL)
    # Suspicion can be short; the timeline keeps the transition even if the row moved on.
    seen = wait_until(lambda: (s := _seen(browser, "n3"))["state"] in ("suspect", "dead")
                      and s, 30, "n3 suspected on the page")
    browser.screenshots("02-n3-suspect")
    seen = wait_until(lambda: (s := _seen(browser, "n3"))["state"] == "dead"
                      and _timeline_has(s, "n3 alive → suspect")
                      and _timeline_has(s, "n3 suspect → dead") and s, 60,
                      "n3 dead on the page, after being suspect")
    assert "n3 dead for" in seen["verdict"]

    written = 0

    def hinted() -> dict[str, Any] | None:
        nonlocal written
        for _ in range(10):  # keep writing: each write for n3 leaves a hint
            client.set(f"during:{written}", "y")
            written += 1
        s = _seen(browser, "n3")
        return s if "hints waiting" in s["verdict"] and _timeline_has(s, "queued") else None

    seen = wait_until(hinted, 30, "writes for the dead n3 become hints, shown on the page")
    browser.screenshots("03-n3-dead-hints-waiting")

    n3.start()
    seen = wait_until(lambda: (s := _seen(browser, "n3"))["state"] == "alive"
                      and _timeline_has(s, "n3 dead → alive")
                      and _timeline_has(s, "delivered") and s, 60,
                      "n3 alive again and its hints delivered, on the page")
    wait_until(lambda: _seen(browser, "n3")["verdict"] == "all 3 nodes alive", 30,
               "the verdict says all 3 alive, no hints waiting")
    browser.screenshots("04-n3-back-hints-delivered")
    # The handoff really happened: n3's own replica now holds a write made while it was dead.
    where = n1.http_json("/api/where/during:0?consistency=all")
    held = {row["node"]: row["versions"] for row in where["replicas"]}
    assert [v["value"] for v in held["n3"]] == ["y"], where

    # The same page in the dark colour scheme (prefers-color-scheme), for the record.
    browser.command("POST", "/goog/cdp/execute", {
        "cmd": "Emulation.setEmulatedMedia",
        "params": {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}})
    assert browser.js("return matchMedia('(prefers-color-scheme: dark)').matches") is True
    browser.screenshots("05-dark")

    errors = [entry for entry in browser.browser_log() if entry.get("level") == "SEVERE"]
    assert errors == [], f"console errors: {errors}"

    # With --admin-token the demo controls, "ask to leave" included, are on the page.
    admin = node_factory.start("solo", extra_args=["--admin-token", "s3cret-token"])
    browser.get(admin.http_url + "/")
    wait_until(lambda: _seen(browser, "solo")["leave"] == 1, 20,
               "the leave control is shown with --admin-token")
