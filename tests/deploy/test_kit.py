"""The deployment kit, checked without a container engine: every file parses, names only
images and files the repository defines, and runs exactly what deploy/render.py renders."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath

import flwr
import pytest
import yaml
from packaging.requirements import Requirement

from deploy import render

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OPERATOR = ROOT / "runs" / "compose"  # git-ignored: certificates, keys and data
SOURCES = ("umedpt", "umedpt_fl", "federation", "client", "server", "strategies")


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def manifests(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()) if doc]


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def unit_values(name: str) -> dict[str, list[str]]:
    """Every ``Key=value`` of a systemd unit (keys may repeat)."""
    values: dict[str, list[str]] = {}
    for line in (DEPLOY / "systemd" / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def dockerfile(name: str) -> list[tuple[str, str]]:
    """(instruction, arguments) of a Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / render.DOCKERFILES[name]).read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def entrypoint(name: str) -> list[str]:
    return json.loads(next(args for ins, args in dockerfile(name) if ins == "ENTRYPOINT"))


def image_key(image: str) -> str:
    return next(key for key, value in render.IMAGES.items() if value == image)


def covered(path: str, mounts: list[str]) -> bool:
    """Whether ``path`` (a file a command names) lies on one of the mount targets."""
    return any(PurePosixPath(path).is_relative_to(target) for target in mounts)


def compose_commands() -> dict[str, list[str]]:
    return {unit: c for (file, unit), c in render.kit_commands().items() if file == "compose.yaml"}


def command_paths(command: list[str]) -> list[str]:
    return [arg for arg in command if arg.startswith("/") and arg != command[0]]


# -- images ---------------------------------------------------------------------------
def test_flower_version_is_the_one_pyproject_pins_and_installs() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = next(Requirement(d) for d in project["dependencies"] if d.startswith("flwr"))
    assert render.FLOWER_VERSION in pinned.specifier
    assert render.FLOWER_VERSION == flwr.__version__
    assert render.VERSION == project["version"]


@pytest.mark.parametrize(
    ("name", "base"),
    [("coordinator", "flwr/superlink"), ("site", "flwr/supernode"),
     ("site-cuda", "flwr/supernode")],
)  # fmt: skip
def test_images_build_on_flowers_pinned_images_and_run_our_command(name: str, base: str) -> None:
    instructions = dockerfile(name)
    (image,) = [args for ins, args in instructions if ins == "FROM"]
    repository, tag = image.split(":")
    assert repository == base
    assert tag.startswith(f"{render.FLOWER_VERSION}-py3.") and "ubuntu" in tag  # glibc: torch
    env = " ".join(args for ins, args in instructions if ins == "ENV")
    assert "FLWR_TELEMETRY_ENABLED=0" in env
    assert "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1" in env
    assert "PIP_NO_INDEX=1" in env  # nothing is installed at run time
    assert entrypoint(name) == ["umedpt-fl"]
    copied = {
        src
        for ins, args in instructions
        if ins == "COPY"
        for src in args.split()[1:-1]
        if not src.startswith("--")
    }
    assert set(SOURCES) <= copied
    assert all((ROOT / src).exists() for src in copied), copied
    torch = next(args for ins, args in instructions if ins == "ARG" and "TORCH_INDEX" in args)
    assert torch.endswith("/whl/cpu") == (name != "site-cuda")


def test_dockerignore_keeps_secrets_and_outputs_out_of_builds() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {"**/*.key", "**/pki", "**/keys", "runs", ".git"} <= ignored
    assert not ignored & set(SOURCES)


# -- nginx ------------------------------------------------------------------------------
def test_the_committed_allow_list_is_its_own_default_rendering() -> None:
    committed = render.NGINX_CONF.read_text()
    assert render.nginx_config(render.NginxSite()) == committed
    other = render.nginx_config(
        render.NginxSite("127.0.0.1:8443", "127.0.0.1:7000", PurePosixPath("/tmp/certs"))
    )
    changed = [
        (a, b) for a, b in zip(committed.splitlines(), other.splitlines(), strict=True) if a != b
    ]
    assert [b.strip() for _, b in changed] == [
        "server 127.0.0.1:7000;          # umedpt-fl server --host 127.0.0.1 --port 9093",
        "listen 127.0.0.1:8443 ssl;                # the port sites dial: umedpt-fl client "
        "--server HOST:9443",
        "ssl_certificate     /tmp/certs/coordinator.pem;",
        "ssl_certificate_key /tmp/certs/coordinator.key;",
        "proxy_ssl_trusted_certificate /tmp/certs/ca.crt;",
    ]
    assert "location /v1/control/ { return 403; }" in other


# -- compose ----------------------------------------------------------------------------
def test_compose_runs_the_rendered_commands() -> None:
    services = compose()["services"]
    commands = compose_commands()
    assert set(commands) == {"coordinator", *render.COMPOSE_SITES}
    for name, command in commands.items():
        service = services[name]
        assert entrypoint(image_key(service["image"])) + service["command"] == command, name
        assert service["restart"] == "on-failure"


def test_compose_references_only_what_the_repo_defines_and_mounts_secrets_read_only() -> None:
    spec = compose()
    named = set(spec["volumes"])
    commands = compose_commands()
    for name, service in spec["services"].items():
        key = image_key(service["image"])
        if "build" in service:
            assert service["build"]["dockerfile"] == render.DOCKERFILES[key]
            assert (DEPLOY / service["build"]["context"]).resolve() == ROOT
        else:
            assert key == "nginx"
        targets = []
        for mount in service["volumes"]:
            source, target, *mode = mount.split(":")
            targets.append(target)
            if source in named:
                assert target == str(render.CONTAINER.state), mount  # state: named volumes
                continue
            assert mode == ["ro"], mount  # certificates, keys, data, configuration
            path = (DEPLOY / source).resolve()
            assert path.is_relative_to(OPERATOR) or path.is_file(), mount
            assert not path.name.endswith("ca.key"), mount
        for path in command_paths(commands.get(name, [])):
            assert covered(path, targets), f"{name}: {path} is not mounted"
    gateway = spec["services"]["fleet-gateway"]
    assert gateway["network_mode"] == "service:coordinator"  # the gateway's loopback is ours
    conf = f"./nginx/{render.NGINX_CONF.name}:/etc/nginx/conf.d/default.conf:ro"
    assert conf in gateway["volumes"]
    certs = render.NginxSite().certs
    for name in ("ca.crt", "coordinator.pem", "coordinator.key"):
        assert f"../runs/compose/pki/{name}:{certs / name}:ro" in gateway["volumes"]
    published = [p for s in spec["services"].values() for p in s.get("ports", [])]
    assert published == [f"{render.PUBLIC_PORT}:{render.PUBLIC_PORT}"]  # nginx's port alone


# -- Kubernetes -------------------------------------------------------------------------
def test_kubernetes_runs_the_rendered_commands_with_state_and_certificates() -> None:
    coordinator, site = manifests("coordinator.yaml"), manifests("site.yaml")
    secret = manifests("coordinator-secret.yaml")
    kit = render.kit_commands()
    for docs, file, container_name in (
        (coordinator, "k8s/coordinator.yaml", "coordinator"),
        (site, "k8s/site.yaml", "site"),
    ):
        (deployment,) = of_kind(docs, "Deployment")
        pod = deployment["spec"]["template"]["spec"]
        containers = {c["name"]: c for c in pod["containers"]}
        container = containers[container_name]
        assert (
            entrypoint(image_key(container["image"])) + container["args"]
            == kit[file, container_name]
        )
        assert pod["securityContext"]["fsGroup"] == 49999  # Flower's `app` user
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        for path in command_paths(kit[file, container_name]):
            assert covered(path, list(mounts)), f"{file}: {path} is not mounted"
        assert not mounts[str(render.CONTAINER.state)].get("readOnly")
        assert all(m.get("readOnly") for p, m in mounts.items() if p != str(render.CONTAINER.state))
        volumes = {v["name"]: v for v in pod["volumes"]}
        state = volumes[mounts[str(render.CONTAINER.state)]["name"]]
        (claim,) = of_kind(docs, "PersistentVolumeClaim")
        assert state["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]

    (deployment,) = of_kind(coordinator, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    assert "ports" not in containers["coordinator"]  # the SuperLink is on the Pod's loopback
    assert containers["fleet-gateway"]["image"] == render.IMAGES["nginx"]
    (configmap,) = of_kind(coordinator, "ConfigMap")
    assert configmap["data"]["default.conf"] == render.NGINX_CONF.read_text()
    (service,) = of_kind(coordinator, "Service")
    assert [p["port"] for p in service["spec"]["ports"]] == [render.PUBLIC_PORT]
    assert containers["fleet-gateway"]["ports"][0]["containerPort"] == render.PUBLIC_PORT
    tls = next(v for v in pod["volumes"] if v["name"] == "tls")["secret"]["secretName"]
    assert secret[0]["metadata"]["name"] == tls
    assert set(secret[0]["stringData"]) == {"ca.crt", "coordinator.pem", "coordinator.key"}
    assert not of_kind(site, "Service")  # sites only dial out
    (policy,) = of_kind(site, "NetworkPolicy")
    assert policy["spec"]["ingress"] == []


# -- systemd ----------------------------------------------------------------------------
@pytest.mark.parametrize("unit", ["umedpt-fl-coordinator.service", "umedpt-fl-site.service"])
def test_systemd_units_run_the_rendered_command_restart_and_keep_state(unit: str) -> None:
    values = unit_values(unit)
    (exec_start,) = values["ExecStart"]
    assert shlex.split(exec_start) == render.kit_commands()[f"systemd/{unit}", "ExecStart"]
    assert values["Restart"] == ["on-failure"]
    assert values["RestartPreventExitStatus"] == ["2"]  # bad input: restarting cannot help
    assert values["StateDirectory"] == ["umedpt-fl"]  # /var/lib/umedpt-fl, never removed
    assert f"/var/lib/{values['StateDirectory'][0]}" == str(render.HOST.state)
