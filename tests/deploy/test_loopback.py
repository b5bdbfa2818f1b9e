"""The kit's own commands as plain processes: a federation behind the committed nginx.

What the containers run (deploy/render.py), with TLS and SuperNode authentication, in a
temporary folder laid out as a container is: `umedpt-fl server` on loopback, nginx with
fleet-only.conf (rendered for this test's port and certificate paths, nothing else) in
front of it, two sites registered with the rendered `sites register` and started with the
rendered `umedpt-fl client`, dialling nginx only. Two rounds pass through nginx; the
Control API does not.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
from pathlib import Path, PurePosixPath

import httpx
import pytest

from deploy import render
from federation import certs
from tests.federation.loopback import (
    Command,
    assert_nothing_left,
    free_port,
    logs,
    outsider_lists_runs,
    stop_all,
    wait_for,
)
from tests.processes import Tracked
from umedpt.data.demo import write_demo_federation

pytestmark = pytest.mark.slow

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None
)
SITES = ("clinic-b", "clinic-d")
# The tiny preset's blocks over timm's smallest test encoder: 1 MB of weights a message
# instead of 22 MB, which the SuperLink, the gateway and nginx would each carry over TLS.
# Deadlines bound a failing run only; a round's processes start slowly on a busy machine.
PLAN = render.Plan(
    min_sites=2,
    rounds=2,
    local_steps=1,
    eval_every=2,
    preset="tiny",
    encoder="test_efficientnet",
    round_timeout=300,
    node_wait_timeout=180,
)


def layout(root: Path) -> render.Layout:
    """The container layout, rooted in a temporary folder."""
    return render.Layout(
        program="umedpt-fl", pki=PurePosixPath(root / "pki"),
        site_keys=PurePosixPath(root / "keys"), keys=PurePosixPath(root / "keys"),
        sites=PurePosixPath(root / "sites"), state=PurePosixPath(root / "coordinator-state"),
    )  # fmt: skip


def rendered(command: list[str], log: Path) -> Command:
    """Run a rendered `umedpt-fl ...` command as the test's Python runs `umedpt-fl`."""
    assert command[0] == "umedpt-fl"
    return Command(*command[1:], log=log)


class Nginx:
    """nginx in the foreground with the rendered allow-list, in a session of its own."""

    def __init__(self, site_conf: str, folder: Path) -> None:
        folder.mkdir()
        (folder / "fleet-only.conf").write_text(site_conf)
        self.access_log = folder / "access.log"
        # As root, nginx's workers would run as nobody, who cannot enter pytest's tmp folder.
        user = "user root;\n" if os.geteuid() == 0 else ""
        (folder / "nginx.conf").write_text(
            f"{user}worker_processes 1;\npid {folder / 'nginx.pid'};\n"
            f"error_log {folder / 'error.log'} info;\nevents {{}}\n"
            f"http {{\n  access_log {self.access_log};\n"
            f"  include {folder / 'fleet-only.conf'};\n}}\n"
        )
        self.log = folder / "nginx.out"
        # In a session of its own under a keeper, which SIGTERMs it if the test process dies.
        with self.log.open("ab") as output:
            self.process = Tracked(
                [NGINX, "-p", str(folder), "-e", str(folder / "error.log"),
                 "-c", str(folder / "nginx.conf"), "-g", "daemon off;"],
                stdout=output, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def requests(self) -> list[str]:
        return self.access_log.read_text().splitlines() if self.access_log.exists() else []

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGQUIT)  # graceful: finish open requests
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


def container_site_files(folder: Path, state_root: Path) -> None:
    """Demo sites, with each state_dir outside the (read-only) site folder, as in the guide."""
    for toml in write_demo_federation(folder, seed=0, images_per_site=30):
        state = state_root / toml.stem / "state"
        text = re.sub(r'(?m)^state_dir = ".*"$', f'state_dir = "{state}"', toml.read_text())
        toml.write_text(text)


@pytest.mark.skipif(
    NGINX is None, reason="the nginx binary is not installed (apt-get install nginx)"
)
def test_rendered_commands_federate_through_the_committed_nginx_config(tmp_path: Path) -> None:
    base = layout(tmp_path)
    pki, keys = Path(base.pki), Path(base.keys)
    certs.init_ca(pki)
    certs.issue_coordinator_cert(pki, ["localhost", "127.0.0.1"])
    for site in SITES:
        certs.create_site_keys(keys, site)
    container_site_files(Path(base.sites), tmp_path)
    (pki / certs.CA_KEY).unlink()  # never on the coordinator's machine: nothing needs it

    gateway_port, public_port = free_port(), free_port()
    nginx = Nginx(
        render.nginx_config(
            render.NginxSite(
                listen=f"127.0.0.1:{public_port}", upstream=f"127.0.0.1:{gateway_port}",
                certs=base.pki,
            )
        ),
        tmp_path / "nginx",
    )  # fmt: skip
    ca = pki / certs.CA_CERT
    tls = ssl.create_default_context(cafile=str(ca))  # the sites' trust: our CA alone
    commands: list[Command] = []
    try:
        coordinator = rendered(
            render.coordinator_command(base, PLAN, port=gateway_port), tmp_path / "coordinator.log"
        )
        commands.append(coordinator)
        wait_for(
            lambda: (
                "SuperLink listening" in coordinator.output()
                or coordinator.process.poll() is not None
            ),
            120,
            "the coordinator",
        )
        assert "registered sites only" in coordinator.output(), coordinator.output()[-3000:]
        registrations = [
            rendered(render.register_command(base, site), tmp_path / f"register-{site}.log")
            for site in SITES
        ]
        commands += registrations
        health = httpx.get(f"https://127.0.0.1:{public_port}/health", verify=tls)
        assert health.status_code == 200  # nginx -> gateway -> SuperLink, verified both ways

        # What nobody on the network may reach: refused by nginx, before our gateway.
        for method, path, status in (
            ("POST", "/v1/control/start-run", 403),
            ("POST", "/v1/control/list-runs", 403),
            ("POST", "/v1/runtime/pull-messages", 403),
            ("GET", "/docs", 404),
            ("GET", "/v1/fleet/get-run", 403),  # only POST passes
        ):
            answer = httpx.request(
                method, f"https://127.0.0.1:{public_port}{path}", verify=tls, content=b""
            )
            assert answer.status_code == status, (method, path, answer.text[:200])
        outsider = outsider_lists_runs(tmp_path, public_port, ca)
        assert outsider.returncode != 0, outsider.stdout + outsider.stderr

        for registration in registrations:  # started before the checks above, to save time
            assert registration.wait(120) == 0, registration.output()
        for site in SITES:
            site_layout = dataclasses.replace(base, state=PurePosixPath(tmp_path / site))
            command = render.site_command(
                site_layout, site, f"127.0.0.1:{public_port}", port=free_port()
            )
            commands.append(rendered(command, tmp_path / f"{site}.log"))
        code = coordinator.wait(540)  # a bound for a busy machine only
    finally:
        stop_all(commands)
        nginx.stop()
    assert code == 0, logs(commands) + f"\n--- nginx\n{nginx.log.read_text()[-2000:]}"

    out = Path(base.out)
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "completed"
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    assert set(report["rounds"][1]["eval_metrics"]) == set(SITES)
    fleet = [r for r in nginx.requests() if '"POST /v1/fleet/' in r]
    assert any('"POST /v1/fleet/push-messages' in r and '" 200 ' in r for r in fleet), fleet[-5:]
    assert all(" 403 " in r for r in nginx.requests() if "/v1/control/" in r)
    for site in SITES:  # each site kept its own log, in its own state folder
        assert (tmp_path / site / "state" / "supernode.log").stat().st_size > 0
    assert_nothing_left(commands)
    assert nginx.process.all_gone(), "nginx outlived the test"
