"""`umedpt-fl client`: run this site as a Flower SuperNode next to its data."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from client.app import SITE_CONFIG_NODE_KEY
from federation.flower_env import flower_env
from federation.processes import (
    Interrupted,
    flower_exit_reason,
    flower_tool,
    interruptible,
    start,
    stop,
    supervisor_env,
)

LOG_NAME = "supernode.log"  # in the site's state folder
# How a site runs its ClientApp (see client.app_host): "process", one long-lived host that
# imports torch and the project once and forks a ready child per message; "subprocess",
# Flower's default, a fresh `flwr-clientapp` process (and its imports) per message.
ISOLATIONS = ("process", "subprocess")
HOST_RESTARTS = 3  # an app host that died this many times would only die again


@dataclass(frozen=True)
class SuperNodeOptions:
    server: str  # HOST:PORT of the SuperLink's Fleet API
    site_config: Path
    insecure: bool = False
    root_certificates: Path | None = None
    port: int = 9094  # this SuperNode's local ClientAppIo API; unique per host
    auth_key: Path | None = None  # this site's private key, when the coordinator asks for one
    trusted_entities: Path | None = None  # Flower's YAML of publishers whose apps may run
    isolation: str = "process"  # one of ISOLATIONS

    def __post_init__(self) -> None:
        if self.isolation not in ISOLATIONS:
            raise ValueError(
                f"--isolation must be one of {', '.join(ISOLATIONS)}, got {self.isolation!r}"
            )
        if ":" not in self.server:
            raise ValueError(f"--server must be HOST:PORT, got {self.server!r}")
        if not self.insecure and not self.root_certificates:
            raise ValueError(
                "TLS is not configured: pass --root-certificates CA.crt (the coordinator's CA), "
                "or --insecure for a test on a trusted network"
            )
        if self.auth_key and self.insecure:
            raise ValueError("--auth-key needs TLS: pass --root-certificates instead of --insecure")
        for flag, path in (("--auth-key", self.auth_key),
                           ("--trusted-entities", self.trusted_entities)):  # fmt: skip
            if path is not None and not path.is_file():
                raise ValueError(f"{flag} {path}: no such file")


def supernode_command(options: SuperNodeOptions) -> list[str]:
    node_config = f"{SITE_CONFIG_NODE_KEY}='{options.site_config.resolve()}'"
    command = [
        flower_tool("flower-supernode"),
        "--superlink",
        options.server,
        "--port",
        str(options.port),
        "--node-config",
        node_config,
    ]
    if options.insecure:
        command.append("--insecure")
    else:
        command += ["--root-certificates", str(options.root_certificates)]
    if options.auth_key:
        command += ["--auth-supernode-private-key", str(options.auth_key.resolve())]
    if options.trusted_entities:
        command += ["--trusted-entities", str(options.trusted_entities.resolve())]
    if options.isolation == "process":  # our app host runs the messages, not Flower's SuperExec
        command += ["--isolation", "process"]
    return command


def app_host_command(options: SuperNodeOptions) -> list[str]:
    """The site's long-lived ClientApp host, asking this SuperNode's Runtime API for work."""
    address = f"127.0.0.1:{options.port}"  # the SuperNode serves it on loopback only
    return [sys.executable, "-m", "client.app_host", "--runtime-api-address", address]


@dataclass(frozen=True)
class SuperNodeExit:
    """How the SuperNode ended: its exit status and, on failure, why in plain words."""

    code: int
    reason: str | None = None
    tail: str = ""
    interrupted: bool = False


def run_supernode(options: SuperNodeOptions, *, log_file: Path) -> SuperNodeExit:
    """Run until the SuperNode exits or we are stopped; its output goes to ``log_file``.

    The log is appended to (a restarted site keeps its history), and Flower's own exit
    code, which it prints rather than returns, is translated for the operator.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    start_offset = log_file.stat().st_size if log_file.exists() else 0
    with interruptible():
        env = {**flower_env(), **supervisor_env()}
        process = start(supernode_command(options), env=env, log_file=log_file)
        hosts: list[subprocess.Popen] = []  # the app host, and any restart of it
        try:
            if options.isolation == "process":
                hosts.append(start(app_host_command(options), env=env, log_file=log_file))
            code = _supervise(process, hosts, options, env=env, log_file=log_file)
        except Interrupted as exc:
            return SuperNodeExit(exc.exit_code, interrupted=True)
        finally:
            for host in hosts:
                stop(host)
            stop(process)
    if code == 0:
        return SuperNodeExit(0)
    with log_file.open("rb") as fh:
        fh.seek(start_offset)
        this_run = fh.read().decode(errors="replace")
    tail = "\n".join(this_run.splitlines()[-20:])
    return SuperNodeExit(code, flower_exit_reason(this_run), tail)


def _supervise(
    supernode: subprocess.Popen,
    hosts: list[subprocess.Popen],
    options: SuperNodeOptions,
    *,
    env: dict[str, str],
    log_file: Path,
    poll: float = 0.5,
) -> int:
    """Wait for the SuperNode to exit (its code); restart an app host that died on the way
    (appended to ``hosts``, which the caller stops).

    A host that keeps dying (a broken installation) is not restarted for ever: after
    ``HOST_RESTARTS`` restarts the site fails, its log naming the host's exit code.
    """
    while (code := supernode.poll()) is None:
        host = hosts[-1] if hosts else None
        if host is not None and (host_code := host.poll()) is not None:
            again = len(hosts) <= HOST_RESTARTS
            with log_file.open("a") as fh:
                fh.write(
                    f"the ClientApp host exited with code {host_code}; "
                    + ("restarting it\n" if again else "giving up\n")
                )
            if not again:
                return 1
            stop(host)
            hosts.append(start(app_host_command(options), env=env, log_file=log_file))
        time.sleep(poll)
    return code
