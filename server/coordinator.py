"""`umedpt-fl server`: start a SuperLink with persistent state and run the federation on it.

Sites join with `umedpt-fl client` (a SuperNode each). The run is submitted with Flower's
own `flwr run`, its log is streamed, and its final status is read back with `flwr ls`
(`flwr run --stream` exits 0 even when a run failed).

The SuperLink serves its Fleet, Control and Runtime APIs on one port, and the Control API
has no authentication in open-source Flower. So the SuperLink listens on 127.0.0.1 only
(on a free port, with a throwaway loopback certificate when TLS is on), and the public
``--host/--port`` is served by :mod:`server.gateway`, which passes the Fleet API alone.
Our own `flwr run`/`flwr ls`, and `umedpt-fl sites ...`, use the loopback address, which
is recorded in ``<out>/.coordinator/flwr-home`` for as long as the coordinator runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import tomli_w
from cryptography import x509

from federation.certs import loopback_tls
from federation.flower_env import flower_env
from federation.processes import (
    FlowerProcessError,
    Interrupted,
    flower_tool,
    interruptible,
    listening_pids,
    log_tail,
    port_is_listening,
    start,
    stop,
    supervisor_env,
    wait_healthy,
)
from federation.settings import SERVER_SETTINGS_ENV, RunSettings, write_server_settings
from server.flower_app import write_app_dir
from server.gateway import GatewayOptions
from server.lock import COORDINATOR_LOCK, folder_lock
from server.state import SERVER_STATE, RunExistsError, read_progress

CONNECTION = "umedpt"


@dataclass(frozen=True)
class SuperLinkOptions:
    """How a SuperLink is served. Given to :func:`coordinate`, they describe the public
    side (the gateway's address and certificate); the SuperLink process itself gets the
    same options moved to loopback (:func:`loopback_options`)."""

    host: str = "0.0.0.0"
    port: int = 9093
    database: Path | None = None  # persistent SuperLink state (SQLite)
    insecure: bool = False
    certfile: Path | None = None
    keyfile: Path | None = None
    ca_certfile: Path | None = None
    node_auth: bool = False  # only registered SuperNodes may connect (needs TLS)

    def __post_init__(self) -> None:
        if not self.insecure and not (self.certfile and self.keyfile and self.ca_certfile):
            raise ValueError(
                "TLS is not configured: pass --ssl-certfile, --ssl-keyfile and --ssl-ca-certfile, "
                "or --insecure for a test on a trusted network"
            )
        if self.insecure and self.node_auth:
            raise ValueError(
                "SuperNode authentication needs TLS (Flower refuses it over plain HTTP): "
                "configure TLS, or pass --no-node-auth with --insecure"
            )


def superlink_command(options: SuperLinkOptions) -> list[str]:
    """The SuperLink's command line; its output goes to ``<out>/superlink.log`` (see start)."""
    command = [
        flower_tool("flower-superlink"),
        "--host",
        options.host,
        "--port",
        str(options.port),
        "--disable-runtime-dependency-installation",
    ]
    if options.database:
        command += ["--database", str(options.database)]
    if options.node_auth:
        command.append("--enable-supernode-auth")
    if options.insecure:
        command.append("--insecure")
    else:
        command += [
            "--ssl-certfile",
            str(options.certfile),
            "--ssl-keyfile",
            str(options.keyfile),
            "--ssl-ca-certfile",
            str(options.ca_certfile),
        ]
    return command


def local_address(options: SuperLinkOptions) -> str:
    """How `flwr run` on this machine reaches our SuperLink: a name its certificate has.

    Flower's CLI checks the host name against the server certificate, so with TLS the
    address must be one of the certificate's names: 127.0.0.1 or localhost when it has
    them, else its first DNS name (which must then resolve to this machine).
    """
    if options.host not in ("0.0.0.0", "::"):
        return options.host
    if options.insecure or options.certfile is None:
        return "127.0.0.1"
    try:
        cert = x509.load_pem_x509_certificate(Path(options.certfile).read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return "127.0.0.1"
    addresses = {str(a) for a in names.get_values_for_type(x509.IPAddress)}
    dns = names.get_values_for_type(x509.DNSName)
    if "127.0.0.1" in addresses:
        return "127.0.0.1"
    if "localhost" in dns or not dns:
        return "localhost" if "localhost" in dns else "127.0.0.1"
    return dns[0]


def write_connection(flwr_home: Path, options: SuperLinkOptions) -> None:
    """Flower's CLI configuration: one connection, to the SuperLink we started."""
    host = local_address(options)
    connection: dict[str, object] = {"address": f"{host}:{options.port}"}
    if options.insecure:
        connection["insecure"] = True
    else:
        connection["root-certificates"] = str(Path(options.ca_certfile).resolve())
    config = {"superlink": {"default": CONNECTION, CONNECTION: connection}}
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_bytes(tomli_w.dumps(config).encode())


def run_status(env: dict[str, str], run_id: str, cwd: Path) -> tuple[str, str]:
    listing = subprocess.run(
        [flower_tool("flwr"), "ls", CONNECTION, "--run-id", run_id, "--format", "json"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    try:
        run = json.loads(listing.stdout)["runs"][0]
    except (ValueError, KeyError, IndexError):
        return "unknown", listing.stdout[-500:] + listing.stderr[-500:]
    return str(run.get("status", "unknown")), str(run.get("status-details", ""))


WORK_DIR = ".coordinator"  # <out>/.coordinator/: Flower's home and the submitted app
SERVER_SETTINGS_FILE = "server-settings.json"  # in WORK_DIR: the ServerApp's whole settings


class PortTakenError(RuntimeError):
    """Something already listens on the coordinator's port; the message names it."""


class RunInterruptedError(RuntimeError):
    """The coordinator was stopped (SIGTERM, Ctrl-C) before the run finished."""

    def __init__(self, out: Path, signum: int) -> None:
        self.signum = signum
        done = completed_round(out)
        super().__init__(
            f"interrupted after round {done}; restart with --resume to continue from there"
            if done
            else "interrupted before the first round completed; restart with --resume"
        )


def completed_round(out: Path) -> int:
    """The last round whose checkpoint is in ``out`` (0 if none)."""
    try:
        progress = read_progress(out / SERVER_STATE)
    except (OSError, ValueError, TypeError):
        return 0
    return progress.completed_round if progress else 0


def check_port_free(port: int) -> None:
    if owners := listening_pids(port):
        named = "; ".join(f"PID {pid} ({cmd[:80]})" for pid, cmd in sorted(owners.items()))
        raise PortTakenError(f"port {port} is already in use by {named}")
    if port_is_listening(port):
        raise PortTakenError(f"port {port} is already in use (by a process not visible here)")


def free_loopback_port() -> int:
    """A port nothing listens on at 127.0.0.1 now (the SuperLink binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def loopback_options(options: SuperLinkOptions, work: Path) -> SuperLinkOptions:
    """The SuperLink's own options: ``options`` moved to 127.0.0.1 on a free port.

    With TLS, the SuperLink gets a throwaway certificate for 127.0.0.1 from a throwaway
    CA (written into ``work``, key 0600): Flower requires TLS on the SuperLink for
    SuperNode authentication, and its CLI checks the host name, which the coordinator's
    public certificate need not cover. The public certificate's key is read by the
    gateway alone.
    """
    internal = dataclasses.replace(options, host="127.0.0.1", port=free_loopback_port())
    if options.insecure:
        return internal
    ca, cert, key = loopback_tls(work / "loopback-tls")
    return dataclasses.replace(internal, certfile=cert, keyfile=key, ca_certfile=ca)


def gateway_options(public: SuperLinkOptions, internal: SuperLinkOptions) -> GatewayOptions:
    scheme = "http" if internal.insecure else "https"
    return GatewayOptions(
        host=public.host,
        port=public.port,
        upstream=f"{scheme}://127.0.0.1:{internal.port}",
        upstream_ca=None if internal.insecure else internal.ca_certfile,
        certfile=None if public.insecure else public.certfile,
        keyfile=None if public.insecure else public.keyfile,
    )


def gateway_command(options: GatewayOptions) -> list[str]:
    return [sys.executable, "-m", "server.gateway", *options.command_args()]


def coordinate(settings: RunSettings, options: SuperLinkOptions) -> str:
    """Run the federation to its end; returns Flower's final status.

    Holds the output folder's coordinator lock for its lifetime and refuses a port that
    is taken; raises FlowerProcessError when the run fails and RunInterruptedError when
    stopped. Nothing it started outlives it. ``options`` are the public side: the
    SuperLink runs on loopback and the gateway serves the Fleet API on
    ``options.host:options.port``.
    """
    out = Path(settings.out_dir).resolve()
    settings = dataclasses.replace(settings, out_dir=str(out))
    with folder_lock(out, COORDINATOR_LOCK, role="umedpt-fl server"):
        if not settings.resume and completed_round(out) > 0:
            raise RunExistsError(
                f"{out} already holds a run; pass --resume to continue it, or choose another --out"
            )
        check_port_free(options.port)
        # Flower's home and the app folder live in the output folder, under our lock: what
        # a killed coordinator left there is cleared by the next one.
        work = out / WORK_DIR
        shutil.rmtree(work, ignore_errors=True)
        try:
            with interruptible():
                work.mkdir(mode=0o700, parents=True)
                internal = loopback_options(options, work)
                env = flower_env({**os.environ, "FLWR_HOME": str(work / "flwr-home")})
                env.update(supervisor_env())
                write_connection(work / "flwr-home", internal)
                # The app config goes to every site: the sites' settings only. The ServerApp
                # (started by the SuperLink, whose environment it inherits) reads the rest here.
                app_dir = write_app_dir(work / "app", settings)
                server_settings = write_server_settings(work / SERVER_SETTINGS_FILE, settings)
                env[SERVER_SETTINGS_ENV] = str(server_settings)
                with _serving(options, internal, env, out):
                    return _submit_run(env, app_dir)
        except Interrupted as exc:
            raise RunInterruptedError(out, exc.signum) from None
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _health_url(scheme: str, host: str, port: int) -> str:
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return (
        f"{scheme}://[{host}]:{port}/health" if ":" in host else f"{scheme}://{host}:{port}/health"
    )


@contextlib.contextmanager
def _serving(
    public: SuperLinkOptions, internal: SuperLinkOptions, env: dict[str, str], out: Path
) -> Iterator[None]:
    """The SuperLink on loopback and the gateway on the public port, both healthy; both
    are stopped when the block ends, however it ends."""
    scheme = "http" if internal.insecure else "https"
    superlink_log = out / "superlink.log"
    superlink = start(superlink_command(internal), env=env, log_file=superlink_log)
    try:
        wait_healthy(
            superlink, _health_url(scheme, internal.host, internal.port), timeout=60,
            what="SuperLink", log_file=superlink_log, ca_file=internal.ca_certfile,
        )  # fmt: skip
        _check_owner(superlink, internal.port, "SuperLink", superlink_log)
        gateway = gateway_options(public, internal)
        gateway_log = out / "gateway.log"
        proxy = start(gateway_command(gateway), env=env, log_file=gateway_log)
        try:
            wait_healthy(
                proxy, _health_url(scheme, public.host, public.port), timeout=30,
                what="gateway", log_file=gateway_log,
                ca_file=None if public.insecure else public.ca_certfile,
            )  # fmt: skip
            _check_owner(proxy, public.port, "gateway", gateway_log)
            auth = "registered sites only" if internal.node_auth else "any site (no node auth)"
            print(
                f"SuperLink listening on 127.0.0.1:{internal.port} (Control API, this machine "
                f"only); Fleet API for sites on {public.host}:{public.port} ({scheme}, "
                f"{auth}); waiting for sites",
                flush=True,
            )
            if internal.node_auth:
                print(
                    f"register each site with: umedpt-fl sites register SITE.pub --out {out}",
                    flush=True,
                )
            yield
        finally:
            stop(proxy, grace=5)
    finally:
        stop(superlink)


def _check_owner(process: subprocess.Popen, port: int, what: str, log_file: Path) -> None:
    if process.pid not in listening_pids(port):
        raise FlowerProcessError(
            f"something other than our {what} (PID {process.pid}) answers on port {port}; "
            f"nothing was submitted. {what} log:\n{log_tail(log_file)}"
        )


def _submit_run(env: dict[str, str], app_dir: Path) -> str:
    """`flwr run` the app on our SuperLink, stream its log, and check how it ended."""
    flwr = flower_tool("flwr")
    run = start(
        [flwr, "run", str(app_dir), CONNECTION, "--stream"],
        env=env,
        cwd=app_dir,
        stdout=subprocess.PIPE,
    )
    run_id = None
    assert run.stdout is not None
    try:
        for raw in run.stdout:
            line = raw.decode(errors="replace")
            sys.stdout.write(line)
            match = re.search(r"run (?:ID )?(\d+)", line, re.IGNORECASE)
            if run_id is None and match:
                run_id = match.group(1)
        run.wait()
    finally:
        stop(run, grace=5)
    if run_id is None:
        raise FlowerProcessError(f"`flwr run` did not report a run id (exit code {run.returncode})")
    status, details = run_status(env, run_id, app_dir)
    if status != "finished:completed":
        raise FlowerProcessError(f"run {run_id} ended as {status}: {details}")
    return status
