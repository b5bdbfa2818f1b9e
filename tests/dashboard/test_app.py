"""The dashboard's web app and its commands' errors (same process; the browser test runs it
for real)."""

from __future__ import annotations

import socket

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from dashboard.app import (
    BackgroundDashboard,
    DashboardError,
    DashboardOptions,
    create_app,
    parse_address,
)
from dashboard.state import STATE_FILE, write_state
from tests.dashboard.states import T0, round_record, state
from umedpt_fl.cli import app as cli
from umedpt_fl.commands.dashboard import start_dashboard

runner = CliRunner()


@pytest.fixture
def run_folder(tmp_path):
    rounds = [round_record(1, asked=["clinic-a", "clinic-b"], replied=["clinic-a", "clinic-b"])]
    write_state(tmp_path, state(rounds))
    return tmp_path


def test_the_page_shows_the_run_and_reloads_itself(run_folder) -> None:
    client = TestClient(create_app(run_folder, refresh=7, clock=lambda: T0 + 15))
    page = client.get("/")
    assert page.status_code == 200
    assert 'data-site="clinic-a"' in page.text and 'data-site="clinic-b"' in page.text
    assert '<meta http-equiv="refresh" content="7">' in page.text
    assert "round 1 of 5 done, round 2 running" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "<script" not in page.text


def test_a_finished_run_stops_reloading(tmp_path) -> None:
    write_state(tmp_path, state([], status="completed"))
    page = TestClient(create_app(tmp_path)).get("/")
    assert "completed" in page.text and "http-equiv" not in page.text


def test_nothing_can_be_changed_through_it(run_folder) -> None:
    client = TestClient(create_app(run_folder))
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert client.request(method, "/").status_code == 405
    assert client.get("/run-state.json").status_code == 404  # not even the file itself
    assert client.get("/health").text == "ok"


def test_before_the_run_writes_its_state_the_page_waits(tmp_path) -> None:
    page = TestClient(create_app(tmp_path / "not-yet")).get("/")
    assert page.status_code == 200 and "waiting for the run" in page.text
    (tmp_path / STATE_FILE).write_text('{"format": 0}')
    page = TestClient(create_app(tmp_path)).get("/")
    assert page.status_code == 500 and "older version" in page.text


def test_a_background_dashboard_serves_and_stops(run_folder) -> None:
    with BackgroundDashboard(DashboardOptions(out=run_folder, port=0)) as view:
        import urllib.request

        with urllib.request.urlopen(view.url, timeout=10) as answer:
            assert 'data-site="clinic-a"' in answer.read().decode()
        port = view.port
    with socket.create_server(("127.0.0.1", port)):  # the port is free again
        pass


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:8050", ("127.0.0.1", 8050)), ("[::1]:9000", ("::1", 9000))],
)
def test_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["8050", "localhost", "host:0", "host:99999", ":8050"])
def test_malformed_addresses_are_refused(text: str) -> None:
    with pytest.raises(DashboardError, match="HOST:PORT"):
        parse_address(text)


def test_a_public_host_needs_tls(tmp_path) -> None:
    with pytest.raises(DashboardError, match="needs TLS"):
        start_dashboard("0.0.0.0:8050", tmp_path)
    with pytest.raises(DashboardError, match="both a TLS certificate and its key"):
        DashboardOptions(out=tmp_path, host="10.0.0.1", certfile=tmp_path / "c.pem")


def test_the_command_refuses_a_folder_that_is_not_a_run(tmp_path) -> None:
    result = runner.invoke(cli, ["dashboard", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "not a run folder" in result.output


def test_the_command_refuses_a_run_of_an_older_version(tmp_path) -> None:
    (tmp_path / "report.json").write_text("{}")
    result = runner.invoke(cli, ["dashboard", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "older version" in result.output
    (tmp_path / STATE_FILE).write_text('{"format": 0}')
    result = runner.invoke(cli, ["dashboard", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "format 0" in result.output


def test_the_command_refuses_a_port_in_use(run_folder) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = runner.invoke(cli, ["dashboard", "--out", str(run_folder), "--port", str(port)])
    assert result.exit_code == 2 and f"127.0.0.1:{port} is in use" in result.output


def test_simulate_refuses_a_port_in_use_before_anything_starts(tmp_path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = runner.invoke(
            cli,
            ["simulate", "--out", str(tmp_path / "sim"), "--dashboard", f"127.0.0.1:{port}"],
        )
    assert result.exit_code == 2 and "is in use" in result.output
    assert not (tmp_path / "sim" / STATE_FILE).exists()  # no round ran


def test_with_a_certificate_the_page_is_served_over_tls_only(run_folder, tmp_path) -> None:
    import ssl
    import urllib.request

    from tests.federation.certs import make_ca, make_server_cert

    ca, ca_key = make_ca(tmp_path)
    cert, key = make_server_cert(tmp_path, ca, ca_key)
    options = DashboardOptions(out=run_folder, port=0, certfile=cert, keyfile=key)
    with BackgroundDashboard(options) as view:
        assert view.url.startswith("https://")
        trusted = ssl.create_default_context(cafile=str(ca))
        with urllib.request.urlopen(view.url, timeout=10, context=trusted) as answer:
            assert 'data-site="clinic-a"' in answer.read().decode()
        with pytest.raises(OSError):  # plain HTTP is not answered (reset or refused)
            urllib.request.urlopen(view.url.replace("https", "http"), timeout=10)


def test_a_certificate_that_is_not_one_is_refused_before_serving(run_folder, tmp_path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(OSError):  # ssl.SSLError: the command's bad-input errors, exit 2
        BackgroundDashboard(DashboardOptions(out=run_folder, port=0, certfile=bad, keyfile=bad))
