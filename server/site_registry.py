"""Registering sites with the running coordinator: `umedpt-fl sites register|revoke|list`.

Flower's `flwr supernode register/unregister` speak the Control API, which only the
coordinator's machine reaches (on the loopback address recorded in its work folder).
Flower keeps registrations in the SuperLink's database (<out>/superlink.db), so they
survive restarts and --resume; we keep a name for each in SITES_FILE, since Flower's
listing shows node IDs only.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from federation.flower_env import flower_env
from federation.processes import flower_tool
from server.coordinator import CONNECTION, WORK_DIR
from server.lock import COORDINATOR_LOCK, FolderLockedError, folder_lock

SITES_FILE = "registered-sites.json"


class NoCoordinatorError(RuntimeError):
    """No coordinator runs on the output folder, so there is no Control API to talk to."""


class SiteRegistryError(RuntimeError):
    """Flower refused a registration change; the message says why."""


def control_env(out: Path) -> dict[str, str]:
    """The environment in which `flwr` reaches the coordinator running on ``out``."""
    out = out.resolve()
    home = out / WORK_DIR / "flwr-home"
    hint = f"start `umedpt-fl server --out {out} ...` first, then register or revoke sites"
    if not out.is_dir():
        raise NoCoordinatorError(f"{out} does not exist; {hint}")
    try:
        with folder_lock(out, COORDINATOR_LOCK, role="umedpt-fl server"):
            running = False
    except FolderLockedError:
        running = True
    if not running or not (home / "config.toml").is_file():
        raise NoCoordinatorError(f"no coordinator is running on {out}; {hint}")
    return flower_env({**os.environ, "FLWR_HOME": str(home)})


def _flwr_json(args: list[str], env: dict[str, str]) -> dict:
    """Run `flwr ARGS --format json`; Flower exits 0 on failure, so read "success"."""
    result = subprocess.run(
        [flower_tool("flwr"), *args, "--format", "json"],
        env=env, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    try:
        data = json.loads(result.stdout)
    except ValueError:
        tail = (result.stdout + result.stderr).strip()[-800:]
        raise SiteRegistryError(f"`flwr {args[0]} {args[1]}` failed: {tail}") from None
    if not data.get("success"):
        message = str(data.get("error-message", "no reason given"))
        message = "\n".join(line for line in message.splitlines() if line.strip()
                            and not line.startswith("Using SuperLink"))  # fmt: skip
        raise SiteRegistryError(message)
    return data


def read_public_key(path: Path) -> tuple[str, str]:
    """(``type base64`` of an OpenSSH EC public key, its comment); bad input names the file."""
    try:
        text = path.read_text().strip()
        key = serialization.load_ssh_public_key(text.encode())
    except (OSError, UnicodeError) as exc:
        raise ValueError(f"{path}: cannot read the site's public key ({exc})") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(
            f"{path} is not an OpenSSH public key (make one with `umedpt-fl certs site`)"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError(f"{path}: Flower needs an ECDSA key (`umedpt-fl certs site` makes one)")
    fields = text.split()
    return " ".join(fields[:2]), " ".join(fields[2:])


def _read_sites(out: Path) -> dict[str, dict]:
    path = out / SITES_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


SITES_LOCK = ".sites.lock"  # one `umedpt-fl sites register|revoke` at a time per folder


def _write_sites(out: Path, sites: dict[str, dict]) -> None:
    tmp = out / f".{SITES_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(sites, indent=2, sort_keys=True) + "\n")
    tmp.replace(out / SITES_FILE)


def register_site(out: Path, public_key: Path, name: str | None = None) -> tuple[str, int]:
    """Register a site's public key with the coordinator running on ``out``.

    Returns (site name, Flower node ID). The name defaults to the key file's comment
    (what `umedpt-fl certs site` writes), else its file name.
    """
    out = out.resolve()
    key, comment = read_public_key(public_key)
    if not name:
        name = comment.split()[0] if comment else public_key.stem
    env = control_env(out)
    with folder_lock(out, SITES_LOCK, role="site registration", wait=60):
        sites = _read_sites(out)
        if name in sites:
            raise SiteRegistryError(
                f"a site named {name!r} is already registered (node {sites[name]['node_id']}); "
                "revoke it first, or choose another --name"
            )
        data = _flwr_json(
            ["supernode", "register", str(public_key.resolve()), CONNECTION, "--name", name], env
        )
        node_id = int(data["node-id"])
        sites[name] = {"node_id": node_id, "public_key": key}
        _write_sites(out, sites)
    return name, node_id


def revoke_site(out: Path, site: str) -> tuple[str, int]:
    """Unregister a site (by name, node ID or public key file); its SuperNode is cut off.

    Returns (site name, node ID). A connected SuperNode is refused at its next call.
    """
    out = out.resolve()
    env = control_env(out)
    with folder_lock(out, SITES_LOCK, role="site registration", wait=60):
        return _revoke_site(out, site, env)


def _revoke_site(out: Path, site: str, env: dict[str, str]) -> tuple[str, int]:
    sites = _read_sites(out)
    if Path(site).is_file():
        key, _ = read_public_key(Path(site))
        matches = [n for n, entry in sites.items() if entry["public_key"] == key]
    elif site.isdigit():
        matches = [n for n, entry in sites.items() if entry["node_id"] == int(site)]
    else:
        matches = [site] if site in sites else []
    if not matches and not site.isdigit():
        known = ", ".join(sorted(sites)) or "none"
        raise SiteRegistryError(f"no registered site matches {site!r} (registered: {known})")
    name = matches[0] if matches else f"node {site}"
    node_id = sites[name]["node_id"] if matches else int(site)
    _flwr_json(["supernode", "unregister", str(node_id), CONNECTION], env)
    if matches:
        del sites[name]
        _write_sites(out, sites)
    return name, node_id


def list_sites(out: Path) -> list[dict[str, str]]:
    """Flower's node listing of the running coordinator, with our site names added."""
    out = out.resolve()
    env = control_env(out)
    names = {entry["node_id"]: name for name, entry in _read_sites(out).items()}
    nodes = _flwr_json(["supernode", "list", CONNECTION], env).get("nodes", [])
    return [
        {"name": names.get(int(node["node-id"]), "?"), "node-id": str(node["node-id"]),
         "status": str(node.get("status", "?"))}
        for node in nodes
    ]  # fmt: skip
