#!/usr/bin/env python3
"""Every command the deployment kit runs, rendered from one place.

The compose file, the Kubernetes manifests and the systemd units each start the same two
commands (`umedpt-fl server` at the coordinator, `umedpt-fl client` at a site) and nginx
with the committed allow-list. They differ only in where files live (a :class:`Layout`)
and in a few addresses, so the commands are built here, and ``tests/deploy`` checks that
every file of the kit runs exactly what this module renders for it, and runs the same
commands as processes in a loopback federation behind the same nginx configuration.

    python deploy/render.py                      # every command of the kit, by file
    python deploy/render.py nginx --listen 127.0.0.1:8443 --upstream 127.0.0.1:9093 \\
        --certs /etc/nginx/certs                 # the allow-list for other ports and paths

Standard library only: it runs on a host without umedpt-fl installed.
"""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

DEPLOY = Path(__file__).resolve().parent
NGINX_CONF = DEPLOY / "nginx" / "fleet-only.conf"

FLOWER_VERSION = "1.42.0"  # the flwr release pyproject.toml pins; the base images' tag
VERSION = "0.1.0"  # umedpt-fl's version, the tag of our images
IMAGES = {
    "coordinator": f"umedpt-fl-coordinator:{VERSION}",
    "site": f"umedpt-fl-site:{VERSION}",
    "site-cuda": f"umedpt-fl-site-cuda:{VERSION}",
    "nginx": "nginx:1.27",
}
DOCKERFILES = {
    "coordinator": "deploy/docker/coordinator.Dockerfile",
    "site": "deploy/docker/site.Dockerfile",
    "site-cuda": "deploy/docker/site-cuda.Dockerfile",
}

PUBLIC_PORT = 9443  # the one port sites dial: nginx, or the coordinator's own gateway on a host
GATEWAY_PORT = 9093  # `umedpt-fl server`'s gateway on loopback, behind nginx
CLIENTAPPIO_PORT = 9094  # a SuperNode's local port, inside its own container or host


@dataclass(frozen=True)
class Layout:
    """Where one kind of deployment keeps its files; the commands differ by nothing else.

    ``pki`` holds ``ca.crt``, ``coordinator.pem`` and ``coordinator.key`` (never
    ``ca.key``), ``site_keys`` the sites' public keys (coordinator side), ``keys`` a site's
    private key, ``sites`` its site file and data (read-only), and ``state`` what must
    survive a restart (the coordinator's output folder, a site's ``state_dir``).
    """

    program: str
    pki: PurePosixPath
    site_keys: PurePosixPath
    keys: PurePosixPath
    sites: PurePosixPath
    state: PurePosixPath

    @property
    def out(self) -> PurePosixPath:
        """The coordinator's output folder (`umedpt-fl server --out`)."""
        return self.state / "federation"

    @property
    def site_state(self) -> PurePosixPath:
        """What a site file's ``state_dir`` says in this layout."""
        return self.state / "state"


# Inside our images: mounts at the same paths in compose and Kubernetes.
CONTAINER = Layout(
    program="umedpt-fl",
    pki=PurePosixPath("/etc/umedpt-fl/pki"),
    site_keys=PurePosixPath("/etc/umedpt-fl/site-keys"),
    keys=PurePosixPath("/etc/umedpt-fl/keys"),
    sites=PurePosixPath("/srv/umedpt-fl/sites"),
    state=PurePosixPath("/var/lib/umedpt-fl"),
)
# A plain Linux host: umedpt-fl in a virtualenv, state in systemd's StateDirectory.
HOST = Layout(
    program="/opt/umedpt-fl/venv/bin/umedpt-fl",
    pki=CONTAINER.pki,
    site_keys=CONTAINER.site_keys,
    keys=CONTAINER.keys,
    sites=CONTAINER.sites,
    state=CONTAINER.state,
)


@dataclass(frozen=True)
class Plan:
    """What the federation runs: the training options of `umedpt-fl server`."""

    min_sites: int = 2
    rounds: int = 100  # the default recipe: 5 local steps per round (docs/recipe.md)
    local_steps: int = 5
    eval_every: int = 5
    preset: str = "tiny"
    encoder: str | None = None  # another timm encoder under the preset's blocks
    round_timeout: float = 1800.0
    node_wait_timeout: float = 3600.0
    extra: tuple[str, ...] = ()  # any other `umedpt-fl server` options

    def args(self) -> list[str]:
        return [
            "--min-sites", str(self.min_sites), "--rounds", str(self.rounds),
            "--local-steps", str(self.local_steps), "--eval-every", str(self.eval_every),
            "--preset", self.preset, "--round-timeout", _number(self.round_timeout),
            "--node-wait-timeout", _number(self.node_wait_timeout),
            *(["--encoder", self.encoder] if self.encoder else []), *self.extra,
        ]  # fmt: skip


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def coordinator_command(
    layout: Layout, plan: Plan, *, host: str = "127.0.0.1", port: int = GATEWAY_PORT
) -> list[str]:
    """`umedpt-fl server` with TLS and SuperNode authentication.

    ``--resume`` is always given: a restarted container or unit continues from the last
    completed round (on an empty folder it starts at round 1).
    """
    return [
        layout.program, "server", "--out", str(layout.out), "--host", host, "--port", str(port),
        "--ssl-certfile", str(layout.pki / "coordinator.pem"),
        "--ssl-keyfile", str(layout.pki / "coordinator.key"),
        "--ssl-ca-certfile", str(layout.pki / "ca.crt"),
        *plan.args(), "--resume",
    ]  # fmt: skip


def site_command(
    layout: Layout, site: str, server: str, *, port: int = CLIENTAPPIO_PORT
) -> list[str]:
    """`umedpt-fl client` for ``site`` (its file ``<sites>/<site>.toml``, key ``<site>.key``)."""
    return [
        layout.program, "client", "--site", str(layout.sites / f"{site}.toml"),
        "--server", server, "--port", str(port),
        "--root-certificates", str(layout.pki / "ca.crt"),
        "--auth-key", str(layout.keys / f"{site}.key"),
    ]  # fmt: skip


def register_command(layout: Layout, site: str) -> list[str]:
    """Admitting a site, run where the coordinator runs (`docker compose exec`, ...)."""
    return [
        layout.program, "sites", "register", str(layout.site_keys / f"{site}.pub"),
        "--out", str(layout.out),
    ]  # fmt: skip


# -- nginx: the committed allow-list, with its addresses and paths substituted ----------
@dataclass(frozen=True)
class NginxSite:
    """What differs between one nginx in front of the coordinator and another."""

    listen: str = str(PUBLIC_PORT)  # "PORT" or "ADDRESS:PORT"
    upstream: str = f"127.0.0.1:{GATEWAY_PORT}"  # the coordinator's gateway
    certs: PurePosixPath = PurePosixPath("/etc/nginx/certs")  # ca.crt, coordinator.pem/.key


def _nginx_lines(site: NginxSite) -> dict[str, str]:
    """{a directive as the committed file spells it: the line it becomes for ``site``}."""
    certs = site.certs
    return {
        r"server\s+\S+;(?=\s+#\s*umedpt-fl server)": f"server {site.upstream};",
        r"listen\s+\S+\s+ssl;": f"listen {site.listen} ssl;",
        r"ssl_certificate\s+\S+;": f"ssl_certificate     {certs / 'coordinator.pem'};",
        r"ssl_certificate_key\s+\S+;": f"ssl_certificate_key {certs / 'coordinator.key'};",
        r"proxy_ssl_trusted_certificate\s+\S+;": (
            f"proxy_ssl_trusted_certificate {certs / 'ca.crt'};"
        ),
    }


def nginx_config(site: NginxSite, template: str | None = None) -> str:
    """``deploy/nginx/fleet-only.conf`` for ``site``; nothing but the addresses and the
    certificate paths changes (the committed file is the rendering of ``NginxSite()``)."""
    text = NGINX_CONF.read_text() if template is None else template
    for pattern, line in _nginx_lines(site).items():
        # each directive occurs exactly once, never as the tail of a longer name
        text, count = re.subn(r"(?<![\w-])" + pattern, lambda _m, line=line: line, text)
        if count != 1:
            raise ValueError(f"{NGINX_CONF.name}: expected one line matching {pattern!r}")
    return text


# -- what each file of the kit runs ------------------------------------------------------
COMPOSE_SITES = ("clinic-a", "clinic-b", "clinic-c", "clinic-d")  # `umedpt-fl demo-data`
COMPOSE_PLAN = Plan(min_sites=len(COMPOSE_SITES), rounds=18, local_steps=5, eval_every=3)
COMPOSE_SERVER = f"coordinator:{PUBLIC_PORT}"  # nginx shares the coordinator's network
EXAMPLE_SITE = "hospital-a"  # the Kubernetes and systemd examples
EXAMPLE_SERVER = f"fed.example.org:{PUBLIC_PORT}"
PRODUCTION_PLAN = Plan(min_sites=3)


def kit_commands() -> dict[tuple[str, str], list[str]]:
    """{(file, service/container/unit): the command it runs} for every file of the kit."""
    commands = {("compose.yaml", "coordinator"): coordinator_command(CONTAINER, COMPOSE_PLAN)}
    for site in COMPOSE_SITES:
        commands["compose.yaml", site] = site_command(CONTAINER, site, COMPOSE_SERVER)
    commands["k8s/coordinator.yaml", "coordinator"] = coordinator_command(
        CONTAINER, PRODUCTION_PLAN
    )
    commands["k8s/site.yaml", "site"] = site_command(CONTAINER, EXAMPLE_SITE, EXAMPLE_SERVER)
    commands["systemd/umedpt-fl-coordinator.service", "ExecStart"] = coordinator_command(
        HOST, PRODUCTION_PLAN, host="0.0.0.0", port=PUBLIC_PORT
    )
    commands["systemd/umedpt-fl-site.service", "ExecStart"] = site_command(
        HOST, EXAMPLE_SITE, EXAMPLE_SERVER
    )
    return commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what")
    nginx = sub.add_parser("nginx", help="print fleet-only.conf for other ports and paths")
    nginx.add_argument("--listen", default=NginxSite.listen)
    nginx.add_argument("--upstream", default=NginxSite.upstream)
    nginx.add_argument("--certs", default=str(NginxSite.certs), type=PurePosixPath)
    args = parser.parse_args(argv)
    if args.what == "nginx":
        print(nginx_config(NginxSite(args.listen, args.upstream, args.certs)), end="")
        return 0
    for (file, unit), command in kit_commands().items():
        print(f"# deploy/{file} [{unit}]\n{shlex.join(command)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
