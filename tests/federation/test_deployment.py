"""A real deployment on loopback over TLS: `umedpt-fl server` plus two `umedpt-fl client`s."""

from __future__ import annotations

import json

import pytest

from tests.federation.certs import make_ca, make_server_cert
from tests.federation.loopback import client, free_port, server
from tests.processes import tagged_processes_after

pytestmark = pytest.mark.slow


def test_two_sites_federate_over_tls_and_a_site_with_another_ca_is_refused(
    demo_sites, tmp_path
) -> None:
    ca, ca_key = make_ca(tmp_path)
    cert, key = make_server_cert(tmp_path, ca, ca_key)
    other_ca, _ = make_ca(tmp_path, name="someone-else")
    port, out = free_port(), tmp_path / "fed"
    coordinator = server(
        out, port, "--min-sites", "2", "--rounds", "2", "--local-steps", "1",
        "--ssl-certfile", str(cert), "--ssl-keyfile", str(key), "--ssl-ca-certfile", str(ca),
        log=tmp_path / "server.log",
    )  # fmt: skip
    sites = [
        client(site, port, "--root-certificates", str(ca), log=tmp_path / f"client-{i}.log")
        for i, site in enumerate([demo_sites[1], demo_sites[3]])
    ]
    stranger = client(
        demo_sites[0], port, "--root-certificates", str(other_ca), log=tmp_path / "stranger.log"
    )
    commands = [coordinator, *sites, stranger]
    try:
        refused = stranger.wait(timeout=300)
        code = coordinator.wait(timeout=400)
    finally:
        for command in commands:
            command.stop()
    logs = "\n".join(f"--- {c.log.name}\n{c.output()[-2500:]}" for c in commands)
    assert code == 0, logs
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "completed" and len(report["rounds"]) == 2
    assert set(report["rounds"][1]["eval_metrics"]) == {"clinic-b", "clinic-d"}
    assert (out / "superlink.db").is_file()
    assert refused == 1, logs
    assert "could not connect to the coordinator" in stranger.output()
    assert "Flower exit code 305" in stranger.output()
    for command in commands:
        assert not tagged_processes_after(command.tag), command.log.name
