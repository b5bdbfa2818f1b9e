"""`umedpt-fl client`: run this site as a Flower SuperNode next to its data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from client.app import SITE_CONFIG_NODE_KEY
from umedpt_fl.flower_env import flower_env
from umedpt_fl.processes import exit_on_sigterm, start, stop


@dataclass(frozen=True)
class SuperNodeOptions:
    server: str  # HOST:PORT of the SuperLink's Fleet API
    site_config: Path
    insecure: bool = False
    root_certificates: Path | None = None
    port: int = 9094  # this SuperNode's local ClientAppIo API; unique per host

    def __post_init__(self) -> None:
        if ":" not in self.server:
            raise ValueError(f"--server must be HOST:PORT, got {self.server!r}")
        if not self.insecure and not self.root_certificates:
            raise ValueError(
                "TLS is not configured: pass --root-certificates CA.crt (the coordinator's CA), "
                "or --insecure for a test on a trusted network"
            )


def supernode_command(options: SuperNodeOptions) -> list[str]:
    node_config = f"{SITE_CONFIG_NODE_KEY}='{options.site_config.resolve()}'"
    command = [
        "flower-supernode",
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
    return command


def run_supernode(options: SuperNodeOptions, *, log_file: Path | None = None) -> int:
    """Run until the SuperNode exits or the user interrupts; returns its exit code."""
    env = flower_env()
    with exit_on_sigterm():
        process = start(supernode_command(options), env=env, log_file=log_file)
        try:
            return process.wait()
        except KeyboardInterrupt:
            return 130
        finally:
            stop(process)
