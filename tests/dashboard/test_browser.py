"""The dashboard as a person sees it: a short `simulate --dashboard`, opened in headless Chromium.

The page is loaded while the run goes on (served by `simulate` itself) and after it has
ended (served by `umedpt-fl dashboard --out`), its site rows and plots are read from the
DOM Chromium built, and a screenshot of each is saved under the test's tmp_path. Needs
Debian's ``chromium`` (``.ci/run`` installs it as root); skipped, saying why, without it.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.processes import Tracked
from umedpt.data.demo import write_demo_federation

pytestmark = [pytest.mark.browser, pytest.mark.slow]

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
ROUNDS = 3
SITES = ("clinic-a", "clinic-b")  # a classification and a segmentation site
MAX_SCREENSHOT_BYTES = 200_000


class Browser:
    """Headless Chromium driven through its command line, one page load per call."""

    def __init__(self, executable: str, profile: Path) -> None:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        self.command = [
            executable, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--hide-scrollbars", f"--user-data-dir={profile}",
        ]  # fmt: skip

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.command, *args], capture_output=True, text=True, timeout=90, check=False
        )

    def dom(self, url: str) -> str:
        """The DOM after the page loaded ('' if it could not be loaded)."""
        return self.run("--dump-dom", url).stdout

    def screenshot(self, url: str, file: Path, size: str = "1100,900") -> Path:
        result = self.run(f"--screenshot={file}", f"--window-size={size}", url)
        assert file.is_file(), result.stderr[-2000:]
        return file


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Browser:
    executable = next((found for name in BROWSERS if (found := shutil.which(name))), None)
    if executable is None:
        pytest.skip("no chromium on PATH: install Debian's chromium (`apt-get install chromium`)")
    found = Browser(executable, tmp_path_factory.mktemp("chromium-profile"))
    try:
        probe = found.run("--dump-dom", "data:text/html,<p id=probe>ok</p>")
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"{executable} cannot run here: {exc}")
    if 'id="probe"' not in probe.stdout:
        pytest.skip(f"{executable} cannot run headless here: {probe.stderr[-500:]}")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "umedpt_fl.cli", *args]


def site_rows(dom: str) -> list[str]:
    return re.findall(r'<tr class="site" data-site="([^"]+)"', dom)


def plot_points(dom: str, site: str) -> int:
    """Points drawn in ``site``'s metric plot."""
    found = re.search(rf"<figcaption>{re.escape(site)}</figcaption>(.*?)</svg>", dom, re.S)
    assert found, f"no plot for {site}"
    return found.group(1).count("<circle")


def wait_for_page(browser: Browser, url: str, wanted: re.Pattern[str], process: Tracked) -> str:
    """The first DOM that matches ``wanted``, loading the page again while ``process`` runs."""
    dom = ""
    while process.poll() is None:
        dom = browser.dom(url)
        if wanted.search(dom):
            return dom
        time.sleep(0.5)
    pytest.fail(f"exited ({process.returncode}) before the page showed {wanted.pattern!r}: {dom}")


def test_the_page_follows_a_simulation_and_shows_it_after_the_end(browser, tmp_path) -> None:
    demo = write_demo_federation(tmp_path / "demo", seed=0, images_per_site=30)
    files = [f for f in demo if f.stem in SITES]
    out = tmp_path / "sim"
    port = free_port()
    args = ["simulate", "--out", str(out), "--rounds", str(ROUNDS), "--local-steps", "1"]
    args += ["--eval-every", "1", "--dashboard", f"127.0.0.1:{port}"]
    for file in files:
        args += ["--site", str(file)]
    log = (tmp_path / "simulate.log").open("w+b")
    simulation = Tracked(command(*args), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"

    # While the run goes on: a round done, the next one running, a row per site, a plot.
    running = re.compile(rf"round ([1-9]) of {ROUNDS} done, round \d running")
    dom = wait_for_page(browser, url, running, simulation)
    assert sorted(site_rows(dom)) == sorted(SITES)
    assert all(plot_points(dom, site) >= 1 for site in SITES)
    assert 'http-equiv="refresh"' in dom and "connected" in dom
    browser.screenshot(url, tmp_path / "running.png")

    code = simulation.wait(600)
    log.seek(0)
    assert code == 0, log.read().decode(errors="replace")[-3000:]
    assert simulation.all_gone()

    # After the end: the same page from the run folder alone.
    port = free_port()
    viewer = Tracked(command("dashboard", "--out", str(out), "--port", str(port)))
    url = f"http://127.0.0.1:{port}/"
    try:
        dom = wait_for_page(browser, url, re.compile("status-completed"), viewer)
        assert f"round {ROUNDS} of {ROUNDS} done" in dom
        assert sorted(site_rows(dom)) == sorted(SITES)
        assert all(plot_points(dom, site) == ROUNDS for site in SITES)  # evaluated every round
        assert 'http-equiv="refresh"' not in dom  # an ended run does not reload
        shot = browser.screenshot(url, tmp_path / "dashboard.png", size="1000,1100")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert shot.stat().st_size < MAX_SCREENSHOT_BYTES
    finally:
        viewer.send_signal(signal.SIGTERM)
    assert viewer.wait(30) == 0 and viewer.all_gone()
