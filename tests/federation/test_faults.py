"""Faults of a real deployment on loopback: killed and stopped coordinators and sites.

Every check of leftover processes looks only at the processes of the command in question
(adopted by its keeper, :class:`tests.processes.Tracked`), never at the whole machine.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import torch

from client.app import app as client_app
from client.round_state import RESIDUAL_FILE, RoundFolders
from client.supernode import LOG_NAME
from federation import certs
from federation.settings import THREADS_ENV, RunSettings
from server.federation import run_federation
from server.state import GLOBAL_CHECKPOINT
from tests.federation.certs import make_ca
from tests.federation.loopback import (
    Command,
    assert_nothing_left,
    client,
    completed_round,
    free_port,
    logs,
    operator_env,
    outsider_lists_runs,
    server,
    stop_all,
    wait_for,
)
from umedpt.checkpoint import load_model
from umedpt.config import load_site_config
from umedpt_fl.inprocess import ClientAppGrid

pytestmark = pytest.mark.slow

# The tiny preset's blocks over timm's smallest test encoder: about 1 MB of weights a message
# instead of 22 MB, which roughly halves what these process tests cost; what they check
# (processes, resume, authentication) does not depend on the encoder.
ENCODER = "test_efficientnet"
ROUNDS = ["--rounds", "2", "--local-steps", "1", "--eval-every", "2", "--encoder", ENCODER]


def in_process_reference(sites, out) -> dict[str, torch.Tensor]:
    """The same federation (sites, seed, rounds) without processes, uninterrupted."""
    settings = RunSettings(
        num_server_rounds=2, local_steps=1, eval_every=2, min_sites=2, out_dir=str(out),
        encoder=ENCODER,
        site_configs=",".join(str(s) for s in sites), state_root=str(out / "sites"),
    )  # fmt: skip
    nodes = {100 + i: {"partition-id": i} for i in range(len(sites))}
    run_federation(ClientAppGrid(client_app, nodes, settings.to_run_config()), settings)
    return load_model(out / GLOBAL_CHECKPOINT).state_dict()


def supernode_log_from_now(site: Path) -> Callable[[], str]:
    """What the SuperNode of ``site`` and its app processes log from now on."""
    log = load_site_config(site).state_dir / LOG_NAME
    offset = log.stat().st_size if log.exists() else 0

    def text() -> str:
        if not log.exists():
            return ""
        with log.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")

    return text


def test_tls_federation_survives_a_stopped_and_a_killed_coordinator(
    demo_sites, tmp_path, monkeypatch
) -> None:
    """Over TLS with SuperNode authentication: only registered sites join, a site with
    another CA or an unregistered key is refused with the reason, and the Control API is
    not reachable on the public port; a second coordinator on the folder or port is
    refused naming the PID; SIGTERM and kill -9 of the coordinator leave no process; two
    resumes (registrations kept) end with the weights of an uninterrupted run.
    """
    # One torch thread in the deployed sites and in the in-process reference alike: the
    # thread count changes float reduction order, and the weights are compared at 1e-5.
    monkeypatch.setenv(THREADS_ENV, "1")
    pki = tmp_path / "pki"
    certs.init_ca(pki)
    public = certs.issue_coordinator_cert(pki, ["localhost", "127.0.0.1"])
    ca = pki / certs.CA_CERT
    site_keys = [certs.create_site_keys(pki, name) for name in ("clinic-b", "clinic-d")]
    intruder_key = certs.create_site_keys(pki, "intruder")  # made, never registered
    other_ca, _ = make_ca(tmp_path, name="someone-else")
    tls = ["--ssl-certfile", str(public.cert), "--ssl-keyfile", str(public.key),
           "--ssl-ca-certfile", str(ca)]  # fmt: skip
    sites = [demo_sites[1], demo_sites[3]]
    port, out = free_port(), tmp_path / "fed"

    def coordinator(name: str, *extra: str):
        return server(out, port, "--min-sites", "2", *tls, *ROUNDS, *extra, log=tmp_path / name)

    first = coordinator("s1.log")
    commands = [first]
    try:
        wait_for(lambda: "SuperLink listening" in first.output(), 120, "the first SuperLink")
        assert "registered sites only" in first.output()
        registrations = [
            Command("sites", "register", str(keys.cert), "--out", str(out),
                    log=tmp_path / f"r{i}.log")
            for i, keys in enumerate(site_keys)
        ]  # fmt: skip
        same_folder = server(out, free_port(), "--insecure", log=tmp_path / "s-folder.log")
        same_port = server(tmp_path / "other", port, "--insecure", log=tmp_path / "s-port.log")
        stranger = client(
            demo_sites[0], port, "--root-certificates", str(other_ca), log=tmp_path / "x.log"
        )
        intruder = client(
            demo_sites[2], port, "--root-certificates", str(ca),
            "--auth-key", str(intruder_key.key), log=tmp_path / "intruder.log",
        )  # fmt: skip
        commands += [*registrations, same_folder, same_port, stranger, intruder]
        outsider = outsider_lists_runs(tmp_path, port, ca)
        assert outsider.returncode != 0
        refusal = " ".join((outsider.stdout + outsider.stderr).replace("│", " ").split())
        assert "Control API is not served on this port" in refusal, refusal
        start_run = httpx.post(
            f"https://127.0.0.1:{port}/v1/control/start-run", verify=str(ca), content=b""
        )  # what `flwr run` sends first
        assert start_run.status_code == 403
        for registration in registrations:
            assert registration.wait(120) == 0, registration.output()
        assert "registered site clinic-b" in registrations[0].output()
        commands += [
            client(site, port, "--root-certificates", str(ca), "--auth-key", str(keys.key),
                   log=tmp_path / f"c{i}.log")
            for i, (site, keys) in enumerate(zip(sites, site_keys))
        ]  # fmt: skip
        assert same_folder.wait(120) == 2 and same_port.wait(120) == 2
        assert f"PID {first.pid}" in same_folder.output()
        assert f"port {port} is already in use by PID" in same_port.output()
        assert "server.gateway" in same_port.output()
        assert stranger.wait(300) == 1
        assert "certificate was not accepted" in " ".join(stranger.output().split())
        assert "Flower exit code 305" in stranger.output()
        assert intruder.wait(300) == 1
        assert "does not know this site's key" in " ".join(intruder.output().split())

        wait_for(lambda: completed_round(out) >= 1, 400, "round 1")
        first.signal(signal.SIGTERM)
        assert first.wait(60) == 128 + signal.SIGTERM
        assert "interrupted after round 1; restart with --resume" in first.output()
        assert first.leaves_nothing(), "processes of a stopped coordinator"

        second = coordinator("s2.log", "--resume")
        commands.append(second)
        wait_for(lambda: "[ROUND 2/2]" in second.output(), 300, "the resumed round 2")
        second.signal(signal.SIGKILL)
        second.wait(10)
        assert second.leaves_nothing(), "orphans of a killed coordinator"

        third = coordinator("s3.log", "--resume")
        commands.append(third)
        code = third.wait(600)
    finally:
        stop_all(commands)
    assert code == 0, logs(commands)
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "completed"
    assert [r["round"] for r in report["rounds"]] == [1, 2]  # one writer, no round twice
    assert set(report["rounds"][1]["eval_metrics"]) == {"clinic-b", "clinic-d"}
    assert_nothing_left(commands)

    deployed = load_model(out / GLOBAL_CHECKPOINT).state_dict()
    reference = in_process_reference(sites, tmp_path / "reference")
    assert deployed.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.allclose(deployed[key], value, atol=1e-5), key


def test_a_killed_site_misses_its_round_and_rejoins_from_its_saved_state(
    demo_sites, tmp_path
) -> None:
    """... under int8 compression: the restarted site still adds its saved residual."""
    port, out = free_port(), tmp_path / "fed"
    # Every command as the shipped systemd units run it: a bare PATH (`env -i
    # PATH=/usr/bin:/bin`), no virtualenv on it; Flower's processes must still find each other.
    bare = operator_env(tmp_path)
    coordinator = server(
        out, port, "--min-sites", "1", "--wait-for-sites", "2", "--round-timeout", "90",
        "--insecure", "--rounds", "3", "--local-steps", "1", "--eval-every", "3",
        "--encoder", ENCODER, "--compression", "int8",
        log=tmp_path / "server.log", env=bare,
    )  # fmt: skip
    steady_log = supernode_log_from_now(demo_sites[1])
    steady = client(demo_sites[1], port, "--insecure", log=tmp_path / "steady.log", env=bare)
    doomed_log = supernode_log_from_now(demo_sites[3])
    doomed = client(demo_sites[3], port, "--insecure", log=tmp_path / "doomed.log", env=bare)
    commands = [coordinator, steady, doomed]
    try:
        wait_for(lambda: completed_round(out) >= 1, 400, "round 1")
        # the command, its reapers, the SuperNode, its app host (client.app_host), and the
        # host's child training round 2 (it logs that it restored the site's round-1 state)
        wait_for(lambda: "restored from round 1" in doomed_log(), 60, "the site's round 2")
        doomed.signal(signal.SIGKILL)
        doomed.wait(10)
        assert doomed.leaves_nothing(), "orphans of a killed site"
        # The kill lands in round 2's training, or (one local step is quick) just after the
        # site saved round 2 but before its reply arrived: it restarts from what it saved.
        key = re.search(r"restored from round 1 of run (\S+)", doomed_log()).group(1)
        folders = RoundFolders(demo_sites[3].parent / "state" / "clinic-d" / "runs" / key)
        saved = max(folders.saved())
        kept = (folders.saved()[saved] / RESIDUAL_FILE).is_file()  # (saved after the state)
        assert saved in (1, 2)
        restarted = client(
            demo_sites[3], port, "--insecure", log=tmp_path / "restarted.log", env=bare
        )
        commands.append(restarted)
        code = coordinator.wait(600)
    finally:
        stop_all(commands)
    assert code == 0, logs(commands)
    report = json.loads((out / "report.json").read_text())
    second, third = report["rounds"][1], report["rounds"][2]
    # Named, whether the SuperLink reported the node gone or the deadline passed first.
    assert [site for site, _ in second["rejected"]] == ["clinic-d"]
    assert set(second["train_metrics"]) == {"clinic-b"}
    assert "clinic-d" in third["train_metrics"], f"{third}\n{logs(commands)}"
    assert third["train_metrics"]["clinic-d"]["restored-round"] == saved
    run_key = report["config"]["run-key"]
    assert run_key == key
    site_log = (demo_sites[3].parent / "state" / "clinic-d" / "supernode.log").read_text()
    restored = f"heads, blocks and optimizer state restored from round {saved} of run {run_key}"
    assert restored in site_log
    # int8 up, bf16 down; the restarted site adds the residual it kept in its saved round
    traffic, full = report["traffic"], report["global_shared_bytes"]
    assert (traffic["codec"], traffic["downlink_codec"], traffic["uplink_codec"]) == (
        "int8", "bf16", "int8",
    )  # fmt: skip
    for record in report["rounds"]:  # (a little over 1/2 and 1/4: the test encoder's
        # int64 BatchNorm counters travel as they are, and its many small tensors a scale each)
        assert all(0.5 < b / full < 0.56 for b in record["bytes_sent"].values()), record
        assert all(0.25 < b / full < 0.33 for b in record["bytes_received"].values()), record
    residual = f"residual of round {saved} added" if kept else "no residual: reset"
    assert f"round 3: int8 change sent with error feedback ({residual})" in site_log
    assert_nothing_left(commands)
    # One long-lived app host per site (client.app_host): imported once, a process per message.
    # (a line may show twice: Opacus' import gives the root logger a handler of its own)
    hosts = set(re.findall(r"app host (\d+): ClientApp imported", steady_log()))
    assert len(hosts) == 1, steady_log()[-3000:]
    children = set(re.findall(r"app host: message process (\d+) done", steady_log()))
    assert len(children) >= 5  # a process each: query, 3 trains, evaluate
    assert_message_timings(demo_sites[1], run_key, report)


def assert_message_timings(site: Path, run_key: str, report: dict) -> None:
    """Each reply's record says where its message's time went (client.message_clock)."""
    state = load_site_config(site).state_dir
    entries = [json.loads(line) for line in (state / "sent.jsonl").read_text().splitlines()]
    entries = [e for e in entries if e["run_key"] == run_key]
    trains = [e for e in entries if e["kind"] == "train"]
    assert [e["round"] for e in trains] == [1, 2, 3]
    round_seconds = {r["round"]: r["seconds"] for r in report["rounds"]}
    for entry in trains:
        timings = entry["timings"]
        assert list(timings) == [
            "received", "app_up", "model_built", "state_restored", "trained", "reply_built",
            "handler",
        ], timings  # fmt: skip
        assert all(v >= 0 for v in timings.values()), timings
        assert timings["trained"] == round(entry["train_seconds"], 3)
        inside = sum(timings[k] for k in ("model_built", "state_restored", "trained"))
        assert inside <= timings["handler"] + 0.002, timings
        # Stages on one machine's clock fit in the round (the kernel's 10 ms tick aside).
        before = timings["received"] + timings["app_up"]
        assert before + timings["handler"] <= round_seconds[entry["round"]] + 0.05, timings
    evaluation = next(e for e in entries if e["kind"] == "evaluate")
    assert {"model_built", "handler"} <= set(evaluation["timings"]), evaluation
    log_text = (state / LOG_NAME).read_text()
    assert "; timings: received " in log_text and "trained " in log_text
