"""The `umedpt-fl` commands as a user runs them (typer's runner, same process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from umedpt import __version__
from umedpt_fl.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli-demo")
    result = runner.invoke(app, ["demo-data", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_demo_data_writes_one_site_file_per_site(demo) -> None:
    assert sorted(p.name for p in demo.glob("*.toml")) == [
        "clinic-a.toml",
        "clinic-b.toml",
        "clinic-c.toml",
        "clinic-d.toml",
        "clinic-dicom.toml",
        "clinic-e.toml",
        "clinic-nifti.toml",
    ]


def test_demo_data_takes_out_as_the_other_commands_do(demo, tmp_path) -> None:
    result = runner.invoke(app, ["demo-data", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.glob("*.toml")) == sorted(
        p.name for p in demo.glob("*.toml")
    )
    for args in ([], [str(tmp_path / "a"), "--out", str(tmp_path / "b")]):
        refused = runner.invoke(app, ["demo-data", *args])
        assert refused.exit_code == 2 and "name the folder once" in refused.output


def test_check_site_prints_a_summary_and_writes_a_preview(demo, tmp_path) -> None:
    preview = tmp_path / "preview.png"
    result = runner.invoke(
        app, ["check-site", str(demo / "clinic-c.toml"), "--preview", str(preview)]
    )
    assert result.exit_code == 0, result.output
    assert "boxes_per_image" in result.output and "site OK" in result.output
    assert preview.stat().st_size > 5000


def test_pretrain_runs_steps_and_writes_safetensors_checkpoints(demo, tmp_path) -> None:
    out = tmp_path / "pretrain"
    args = ["pretrain", "--out", str(out), "--steps", "2", "--eval-every", "2", "--device", "cpu"]
    for site in ("clinic-a", "clinic-b"):
        args += ["--site", str(demo / f"{site}.toml")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "validation after step 2" in result.output
    files = sorted(p.name for p in (out / "checkpoint").glob("*.safetensors"))
    assert files == [
        "blocks.classification.safetensors",
        "blocks.segmentation.safetensors",
        "encoder.safetensors",
        "heads.blobs.safetensors",
        "heads.lesions.safetensors",
    ]
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["step"] == 2 and set(history[-1]["val"]) == {"blobs", "lesions"}


def test_bad_site_file_fails_with_the_file_and_field_named(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[tasks]]\nname = "x"\ntype = "classification"\nformat = "npz"\n')
    result = runner.invoke(app, ["check-site", str(bad)])
    assert result.exit_code == 2
    assert "bad.toml" in result.output and "tasks[0].path" in result.output


def test_client_refuses_plaintext_unless_asked(demo) -> None:
    result = runner.invoke(
        app,
        [
            "client",
            "--site",
            str(demo / "clinic-a.toml"),
            "--server",
            "127.0.0.1:1",
            "--skip-check",
        ],
    )
    assert result.exit_code == 2
    assert "TLS is not configured" in result.output


def test_help_lists_every_registered_command_and_version_prints() -> None:
    from umedpt_fl.cli import COMMANDS

    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name, _ in COMMANDS:
        assert name in result.output
    assert {name for name, _ in COMMANDS} == {
        "simulate", "server", "client", "check-site", "pretrain", "evaluate", "export",
        "demo-data", "dashboard",
    }  # fmt: skip
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output.strip() == f"umedpt-fl {__version__}"


def test_choices_are_listed_by_help_and_checked(demo) -> None:
    from strategies import strategy_names

    result = runner.invoke(app, ["simulate", "--help"], env={"COLUMNS": "250"})
    assert all(name in result.output for name in strategy_names())
    assert "swin-t" in result.output and "equal" in result.output
    bad = runner.invoke(app, ["simulate", "--strategy", "fedsgd", "--out", "x"])
    assert bad.exit_code == 2 and "fedsgd" in bad.output
    bad = runner.invoke(
        app, ["pretrain", "--site", str(demo / "clinic-a.toml"), "--out", "x", "--device", "tpu"]
    )
    assert bad.exit_code == 2


def test_simulate_names_a_bad_site_file_before_starting_anything(demo, tmp_path) -> None:
    sites = ["--site", str(demo / "clinic-a.toml"), "--site", str(tmp_path / "no.toml")]
    result = runner.invoke(app, ["simulate", *sites, "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "no.toml" in result.output and "not found" in result.output
    assert not (tmp_path / "run").exists()


WITHOUT_RAY = """
import sys
sys.modules["ray"] = None  # as after `pip install -e .` without the simulation extra
sys.argv = ["umedpt-fl", *sys.argv[1:]]
from umedpt_fl.cli import main
main()
"""


def test_without_ray_every_command_but_simulate_works_and_simulate_says_how(demo) -> None:
    import subprocess
    import sys

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", WITHOUT_RAY, *args], capture_output=True, text=True, timeout=120
        )

    for command in ("client", "server"):
        assert run(command, "--help").returncode == 0, command
    assert run("check-site", str(demo / "clinic-d.toml")).returncode == 0
    result = run("simulate", "--site", str(demo / "clinic-d.toml"), "--out", str(demo / "x"))
    assert result.returncode == 2
    assert "pip install 'umedpt-fl[simulation]'" in " ".join(result.stdout.split())
