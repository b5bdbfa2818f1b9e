"""The environment of the Flower processes we start: they find each other under a bare PATH,
and nothing in the operator's environment re-opens the unauthenticated Control API."""

from __future__ import annotations

import shutil

from federation.flower_env import flower_env


def test_flower_finds_its_own_executables_under_a_bare_path() -> None:
    """systemd's default PATH has no virtualenv on it; the SuperLink starts
    `flower-superexec` and the SuperNode `flwr-clientapp` by name."""
    bare = {"PATH": "/usr/bin:/bin"}
    assert shutil.which("flower-superexec", path=bare["PATH"]) is None  # the failure mode
    env = flower_env(bare)
    for name in ("flower-superexec", "flwr-clientapp", "flwr-serverapp", "flower-superlink"):
        assert shutil.which(name, path=env["PATH"]), name
    assert env["PATH"].endswith("/usr/bin:/bin")  # the operator's PATH follows, unchanged


def test_the_control_api_cannot_be_reopened_from_the_environment() -> None:
    env = flower_env({"PATH": "/usr/bin", "FLWR_INTERNAL_GRPC_CONTROL_API": "1"})
    assert env["FLWR_INTERNAL_GRPC_CONTROL_API"] == "0"
    assert env["FLWR_TELEMETRY_ENABLED"] == "0"
