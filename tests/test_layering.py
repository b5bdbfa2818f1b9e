"""The repo's layering rules, checked on every import statement (function-level ones too)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The composing modules of umedpt_fl: they import both sides, so neither side may import them.
COMPOSING = ("umedpt_fl.cli", "umedpt_fl.simulation", "umedpt_fl.simulate_command",
             "umedpt_fl.inprocess")  # fmt: skip
FORBIDDEN = {
    "umedpt": ("flwr", "client", "server", "strategies", "umedpt_fl", "ray"),
    "client": ("server", "strategies", *COMPOSING),
    "server": ("client", *COMPOSING),
    "strategies": ("client", "server", *COMPOSING),
    "bench": ("tests",),
}


# What client and server share must not lean on either side (nor on the server's strategies).
SHARED = ("umedpt_fl/wire.py", "umedpt_fl/settings.py", "umedpt_fl/processes.py",
          "umedpt_fl/flower_env.py", "umedpt_fl/__init__.py")  # fmt: skip


def imported_modules(file: Path) -> set[str]:
    tree = ast.parse(file.read_text(), filename=str(file))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative imports would slip past the rules below
                found.add(f"<relative import in {file.name}>")
            elif node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
            found.add(f"<import_module in {file.name}>")
    return found


def breaks(package: str) -> list[str]:
    problems = []
    for file in sorted((ROOT / package).rglob("*.py")):
        for module in imported_modules(file):
            for banned in FORBIDDEN[package]:
                if module == banned or module.startswith(banned + "."):
                    problems.append(f"{file.relative_to(ROOT)} imports {module}")
    return problems


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_its_layer_allows(package: str) -> None:
    assert breaks(package) == []


@pytest.mark.parametrize("path", SHARED)
def test_what_both_sides_share_imports_neither(path: str) -> None:
    modules = imported_modules(ROOT / path)
    assert not [m for m in modules if m.split(".")[0] in ("client", "server", "strategies")]
    assert not [m for m in modules if m.startswith("<")]


def test_no_relative_or_dynamic_imports_anywhere() -> None:
    odd = [
        f"{file.relative_to(ROOT)}: {m}"
        for package in FORBIDDEN
        for file in sorted((ROOT / package).rglob("*.py"))
        for m in imported_modules(file)
        if m.startswith("<")
    ]
    assert odd == []


def test_the_rule_catches_a_break(tmp_path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from server.report import write_report\n")
    assert "server.report" in imported_modules(bad)


def test_flower_telemetry_is_off_in_the_client_and_server_apps() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLWR_")}
    probe = (
        "import client.app, server.app\n"
        "from flwr.supercore import telemetry\n"
        "print(telemetry.FLWR_TELEMETRY_ENABLED)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "0"
