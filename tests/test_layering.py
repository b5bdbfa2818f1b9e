"""The repo's layering rules, checked on every import statement (function-level ones too).

Layers, bottom up: ``umedpt`` (the ML core, no Flower), ``federation`` (what client and
server share), ``client`` / ``server`` / ``strategies`` (the two sides; ``server`` may use
``strategies``), ``dashboard`` (the coordinator's read-only view of the run-state file
``server`` writes: no Flower, neither side), ``umedpt_fl`` (the commands: the only package
that imports both sides), and ``bench``/``experiments``/``deploy`` beside them. Every
Python file of the repo belongs to one of them: a new package must be given its rules here.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What each package may not import (prefix match on the module's dotted name).
FORBIDDEN = {
    "umedpt": ("flwr", "ray", "typer", "client", "server", "strategies", "federation", "umedpt_fl"),
    "federation": ("client", "server", "strategies", "umedpt_fl", "typer"),
    "client": ("server", "strategies", "umedpt_fl", "typer", "dashboard"),
    "server": ("client", "umedpt_fl", "typer"),
    "strategies": ("client", "server", "umedpt_fl", "typer"),
    # the coordinator's read-only view of a run folder: no Flower, no torch, neither side
    "dashboard": ("flwr", "ray", "torch", "client", "server", "strategies", "umedpt_fl", "typer"),
    "umedpt_fl": (),  # the composition root imports every layer
    "bench": ("tests", "experiments"),
    "experiments": ("tests",),
    "deploy": ("client", "server", "strategies", "federation", "umedpt_fl", "tests"),
    "tests": (),
}
# Where no package lives (scripts and configs beside the packages).
NOT_PACKAGES = {".git", ".ci", "docs", "runs", "build"}


def python_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py")) if (ROOT / package).is_dir() else []


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
    for file in python_files(package):
        for module in imported_modules(file):
            for banned in FORBIDDEN[package]:
                if module == banned or module.startswith(banned + "."):
                    problems.append(f"{file.relative_to(ROOT)} imports {module}")
    return problems


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_its_layer_allows(package: str) -> None:
    assert breaks(package) == []


def test_every_python_file_belongs_to_a_layer() -> None:
    homeless = [
        str(file.relative_to(ROOT))
        for file in ROOT.rglob("*.py")
        if file.relative_to(ROOT).parts[0] not in FORBIDDEN
        and file.relative_to(ROOT).parts[0] not in NOT_PACKAGES
        and not any(part.startswith(".") for part in file.relative_to(ROOT).parts)
    ]
    assert homeless == []


def test_no_relative_or_dynamic_imports_anywhere() -> None:
    odd = [
        f"{file.relative_to(ROOT)}: {m}"
        for package in FORBIDDEN
        for file in python_files(package)
        for m in imported_modules(file)
        if m.startswith("<")
    ]
    assert odd == []


def test_no_test_module_imports_another() -> None:
    """Helpers shared by test modules live in helper modules (``tests/helpers.py``,
    ``tests/federation/inprocess.py``, ...), not in another ``test_*`` module: a test file
    is free to change its helpers, and importing it runs its module-level setup."""
    tests_importing_tests = [
        f"{file.relative_to(ROOT)} imports {module}"
        for file in python_files("tests")
        for module in imported_modules(file)
        if module.startswith("tests.") and any(p.startswith("test_") for p in module.split("."))
    ]
    assert tests_importing_tests == []


def test_the_rule_catches_a_break(tmp_path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from server.report import write_report\n")
    assert "server.report" in imported_modules(bad)


def fresh_python(probe: str) -> str:
    """What ``probe`` prints in a new interpreter whose environment has no FLWR_ variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLWR_")}
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def test_importing_a_package_switches_nothing_on() -> None:
    """Telemetry-off is done by the process entries, not as a side effect of an import."""
    probe = (
        "import os, federation, client, server, strategies, umedpt_fl\n"
        "print(os.environ.get('FLWR_TELEMETRY_ENABLED'))\n"
    )
    assert fresh_python(probe) == "None"


@pytest.mark.parametrize("entry", ["client.app", "server.app", "umedpt_fl.cli"])
def test_flower_telemetry_is_off_from_each_process_entry(entry: str) -> None:
    probe = f"import {entry}\nfrom flwr.supercore import telemetry\n"
    assert fresh_python(probe + "print(telemetry.FLWR_TELEMETRY_ENABLED)") == "0"
