"""What the coordinator and the client tell Flower's processes, and the run's report files."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from client.supernode import SuperNodeOptions, app_host_command, supernode_command
from federation import wire
from server.coordinator import (
    SuperLinkOptions,
    local_address,
    superlink_command,
    write_connection,
)
from server.report import primary_metrics, site_summary, write_plot, write_report


def test_superlink_command_with_tls_and_persistent_state(tmp_path) -> None:
    options = SuperLinkOptions(
        host="0.0.0.0", port=9100, database=tmp_path / "db.sqlite",
        certfile=Path("s.pem"), keyfile=Path("s.key"), ca_certfile=Path("ca.crt"),
    )  # fmt: skip
    command = superlink_command(options)
    assert Path(command[0]).name == "flower-superlink"

    def value(flag: str) -> str:
        return command[command.index(flag) + 1]

    assert value("--port") == "9100" and value("--database") == str(tmp_path / "db.sqlite")
    assert value("--ssl-certfile") == "s.pem" and value("--ssl-ca-certfile") == "ca.crt"
    assert "--disable-runtime-dependency-installation" in command
    assert "--insecure" not in command


def test_superlink_refuses_to_start_without_tls_unless_asked() -> None:
    with pytest.raises(ValueError, match="TLS is not configured"):
        SuperLinkOptions(certfile=Path("s.pem"))
    insecure = superlink_command(SuperLinkOptions(insecure=True))
    assert "--insecure" in insecure and "--ssl-certfile" not in insecure


def test_connection_file_points_flwr_at_our_superlink(tmp_path) -> None:
    options = SuperLinkOptions(
        host="0.0.0.0", port=9200, certfile=Path("s.pem"), keyfile=Path("s.key"),
        ca_certfile=tmp_path / "ca.crt",
    )  # fmt: skip
    write_connection(tmp_path / "home", options)
    config = tomllib.loads((tmp_path / "home" / "config.toml").read_text())["superlink"]
    connection = config[config["default"]]
    assert connection == {
        "address": "127.0.0.1:9200",
        "root-certificates": str((tmp_path / "ca.crt").resolve()),
    }


def test_supernode_command_names_its_site_file(tmp_path) -> None:
    site = tmp_path / "site a.toml"
    options = SuperNodeOptions(server="10.0.0.1:9093", site_config=site, insecure=True, port=9111)
    command = supernode_command(options)
    assert Path(command[0]).name == "flower-supernode"
    assert command[command.index("--superlink") + 1] == "10.0.0.1:9093"
    assert command[command.index("--port") + 1] == "9111"
    assert command[command.index("--node-config") + 1] == f"site-config='{site.resolve()}'"
    with pytest.raises(ValueError, match="HOST:PORT"):
        SuperNodeOptions(server="nowhere", site_config=site, insecure=True)


def test_a_site_runs_its_messages_in_one_long_lived_app_host_unless_asked(tmp_path) -> None:
    site = tmp_path / "site.toml"
    options = SuperNodeOptions(server="10.0.0.1:9093", site_config=site, insecure=True, port=9111)
    command = supernode_command(options)  # Flower starts no executor of its own
    assert command[command.index("--isolation") + 1] == "process"
    host = app_host_command(options)  # ours, on the SuperNode's local Runtime API
    assert host[1:3] == ["-m", "client.app_host"]
    assert host[host.index("--runtime-api-address") + 1] == "127.0.0.1:9111"
    flowers = SuperNodeOptions(
        server="10.0.0.1:9093", site_config=site, insecure=True, isolation="subprocess"
    )
    assert "--isolation" not in supernode_command(flowers)  # Flower's default
    with pytest.raises(ValueError, match="--isolation must be one of process, subprocess"):
        SuperNodeOptions(server="h:1", site_config=site, insecure=True, isolation="thread")


def report_with_two_rounds() -> dict:
    tasks = wire.encode_tasks([wire.TaskDescriptor("lesions", "classification", "accuracy")])
    rounds = [
        {"round": r, "eval_metrics": {"a": {"lesions/accuracy": acc, "lesions/loss": loss}}}
        for r, acc, loss in ((1, 0.4, 1.2), (2, 0.7, 0.8))
    ]
    return {"status": "completed", "sites": {"a": {wire.TASKS: tasks}}, "rounds": rounds}


def test_report_json_is_replaced_whole_and_summarised_per_site(tmp_path) -> None:
    report = report_with_two_rounds()
    write_report(tmp_path, {"status": "running"})
    write_report(tmp_path, report)
    assert json.loads((tmp_path / "report.json").read_text()) == report
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    assert primary_metrics(report["sites"]) == {"a": [("lesions", "accuracy")]}
    assert site_summary(report) == {
        "a": {"lesions/accuracy": (0.4, 0.7), "lesions/loss": (1.2, 0.8)}
    }


def test_plot_has_a_panel_per_site_and_is_skipped_without_rounds(tmp_path) -> None:
    assert write_plot(tmp_path, {**report_with_two_rounds(), "rounds": []}) is None
    path = write_plot(tmp_path, report_with_two_rounds())
    assert path is not None and path.stat().st_size > 5000


def test_flwr_reaches_our_superlink_by_a_name_its_certificate_has(tmp_path) -> None:
    from tests.federation.certs import make_ca, make_server_cert

    ca, key = make_ca(tmp_path)
    cert, cert_key = make_server_cert(tmp_path, ca, key)  # names localhost and 127.0.0.1
    options = SuperLinkOptions(certfile=cert, keyfile=cert_key, ca_certfile=ca)
    assert local_address(options) == "127.0.0.1"
    assert local_address(SuperLinkOptions(host="10.1.2.3", insecure=True)) == "10.1.2.3"


def test_a_swap_cut_short_by_a_crash_resumes_from_the_previous_state(tmp_path) -> None:
    import torch

    from server.state import ServerProgress, has_server_state, load_server_state, save_server_state
    from umedpt.models.presets import PRESETS

    folder = tmp_path / "server-state"
    weights = {"encoder.w": torch.ones(2)}
    save_server_state(folder, weights, PRESETS.get("tiny"), {}, ServerProgress(3, "key", {}))
    folder.rename(folder.with_name("server-state.old"))  # killed between the two renames
    assert has_server_state(folder)
    loaded, _, progress = load_server_state(folder)
    assert progress.completed_round == 3 and torch.equal(loaded["encoder.w"], weights["encoder.w"])
