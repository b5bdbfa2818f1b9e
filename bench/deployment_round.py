"""Seconds per round of a real deployment on loopback, against the slowest site's training.

What an operator runs: `umedpt-fl server` with TLS and registered sites only, three demo
sites (`umedpt-fl client`, one of them with DP-SGD), 3 local steps a round; with and
without `--secure-aggregation`; each site's ClientApp under both isolations side by side in
one run: "subprocess" (Flower's default: a fresh `flwr-clientapp` process, and all its
imports, per message; the mode before issue 23 section 4) and "process" (one long-lived
app host per site that forks a ready process per message: client/app_host.py); and with
the weights packed into one buffer (``--pack-arrays``, federation/packing.py: a few Flower
objects per message instead of one or two per tensor) or not.

A round's cost is the server's round seconds (report.json, training and, in the last
round, evaluation); the slowest site's training is the largest ``train_seconds`` of the
round in the sites' ``sent.jsonl``, whose ``timings`` say where the rest went. Round 1
also loads data and starts the host's first message; rounds 2.. are the steady state.
Goal (issue 23): a steady round costs at most the slowest training + 5 s (+ 10 s more
with secure aggregation).

    PYTHONPATH=$PWD python3 -m bench.deployment_round          # about 35 min on 2 busy cores
    PYTHONPATH=$PWD python3 -m bench.deployment_round --quick  # one round each, plain only
    PYTHONPATH=$PWD python3 -m bench.deployment_round --isolations process --packing off,on

(An absolute PYTHONPATH: the coordinator runs `flwr run` in its app folder.)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import bench_parser, finish_run, log, median, scratch_dir, start_run
from bench.report import Report
from federation import certs
from federation.processes import start, stop
from umedpt.data.demo import write_demo_federation

ISOLATIONS = ("subprocess", "process")  # before, after
PACKING = ("on",)  # --pack-arrays, the default; "off,on" compares
SITES = 3
# One site trains under DP-SGD, as in the issue's report.
PRIVACY = "\n[privacy]\ntarget_epsilon = 50.0\ntarget_delta = 1e-5\nmax_grad_norm = 1.0\n"
PLAIN_GOAL = 5.0  # seconds over the slowest site's training
SECAGG_EXTRA = 10.0  # more, with secure aggregation's four stages


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Case:
    isolation: str
    secure_aggregation: bool
    pack_arrays: bool = True

    @property
    def name(self) -> str:
        packing = " + packed" if self.pack_arrays else ""
        return f"{self.isolation}{packing}{' + secagg' if self.secure_aggregation else ''}"

    @property
    def goal(self) -> float:
        return PLAIN_GOAL + (SECAGG_EXTRA if self.secure_aggregation else 0.0)


def umedpt_fl(*args: str, log_file: Path, env: dict[str, str]) -> subprocess.Popen:
    """A `umedpt-fl` command in its own session, tied to our life (federation.processes)."""
    return start([sys.executable, "-m", "umedpt_fl.cli", *args], env=env, log_file=log_file)


def wait_for_text(path: Path, text: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise RuntimeError(f"{path.name}: exited with {process.returncode} before {text!r}")
        time.sleep(0.2)
    raise TimeoutError(f"{path.name}: no {text!r} within {timeout:.0f} s")


def site_entries(site_tomls: list[Path], work: Path) -> list[dict[str, Any]]:
    entries = []
    for toml in site_tomls:
        sent = work / "sites" / toml.stem / "state" / "sent.jsonl"
        if sent.exists():
            entries += [json.loads(line) for line in sent.read_text().splitlines() if line]
    return entries


def run_case(case: Case, work: Path, args: Any) -> dict[str, Any]:
    """One federation on loopback, TLS and registered sites; its rounds, measured."""
    work.mkdir(parents=True)
    tomls = write_demo_federation(work / "data", seed=args.seed, images_per_site=30)[:SITES]
    for toml in tomls:  # state outside the data folder, one folder per case
        state = work / "sites" / toml.stem / "state"
        text = "\n".join(
            f'state_dir = "{state}"' if line.startswith("state_dir =") else line
            for line in toml.read_text().splitlines()
        )
        toml.write_text(text + "\n" + (PRIVACY if toml == tomls[0] else ""))
    pki = work / "pki"
    certs.init_ca(pki)
    public = certs.issue_coordinator_cert(pki, ["localhost", "127.0.0.1"])
    keys = [certs.create_site_keys(pki, toml.stem) for toml in tomls]
    ca = pki / certs.CA_CERT
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    port, out = free_port(), work / "out"
    rounds = args.rounds
    server_args = [
        "server", "--out", str(out), "--host", "127.0.0.1", "--port", str(port),
        "--min-sites", str(SITES), "--rounds", str(rounds), "--local-steps", "3",
        "--eval-every", str(rounds), "--seed", str(args.seed), "--node-wait-timeout", "600",
        "--ssl-certfile", str(public.cert), "--ssl-keyfile", str(public.key),
        "--ssl-ca-certfile", str(ca),
    ]  # fmt: skip
    if case.secure_aggregation:
        server_args.append("--secure-aggregation")
    server_args.append("--pack-arrays" if case.pack_arrays else "--no-pack-arrays")
    processes: list[subprocess.Popen] = []
    try:
        server = umedpt_fl(*server_args, log_file=work / "server.log", env=env)
        processes.append(server)
        wait_for_text(work / "server.log", "SuperLink listening", server, 300)
        for i, key in enumerate(keys):
            registration = umedpt_fl(
                "sites", "register", str(key.cert), "--out", str(out),
                log_file=work / f"register-{i}.log", env=env,
            )  # fmt: skip
            if registration.wait(300) != 0:
                raise RuntimeError((work / f"register-{i}.log").read_text()[-2000:])
        started = time.monotonic()
        for toml, key in zip(tomls, keys, strict=True):
            processes.append(
                umedpt_fl(
                    "client",
                    "--site",
                    str(toml),
                    "--server",
                    f"127.0.0.1:{port}",
                    "--port",
                    str(free_port()),
                    "--root-certificates",
                    str(ca),
                    "--auth-key",
                    str(key.key),
                    "--isolation",
                    case.isolation,
                    log_file=work / f"client-{toml.stem}.log",
                    env=env,
                )  # fmt: skip
            )
        code = server.wait(args.timeout)
        wall = time.monotonic() - started
    finally:
        for process in processes:
            stop(process)
    if code != 0:
        raise RuntimeError(f"{case.name}: server exited {code}:\n" + _tail(work / "server.log"))
    report = json.loads((out / "report.json").read_text())
    entries = [e for e in site_entries(tomls, work) if e["kind"] == "train"]
    measured = []
    for record in report["rounds"]:
        train = [e for e in entries if e["round"] == record["round"]]
        slowest = max((e["train_seconds"] or 0.0 for e in train), default=0.0)
        measured.append(
            {
                "round": record["round"],
                "seconds": record["seconds"],
                "slowest_train_seconds": slowest,
                "overhead_seconds": record["seconds"] - slowest,
                "evaluated": record["round"] == rounds,
                "timings": {e["site"]: e.get("timings") for e in train},
            }
        )
    return {"case": case.name, "isolation": case.isolation,
            "secure_aggregation": case.secure_aggregation, "pack_arrays": case.pack_arrays,
            "goal_overhead_seconds": case.goal,
            "wall_seconds": wall, "rounds": measured}  # fmt: skip


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def steady(case: dict[str, Any]) -> list[dict[str, Any]]:
    """Rounds after the first that evaluated nothing (the first round when there is none)."""
    rounds = [r for r in case["rounds"] if r["round"] > 1 and not r["evaluated"]]
    return rounds or case["rounds"][:1]


def summarise(case: dict[str, Any]) -> dict[str, Any]:
    rounds = steady(case)
    overhead = median([r["overhead_seconds"] for r in rounds])
    stages: dict[str, list[float]] = {}
    for r in rounds:
        for timings in r["timings"].values():
            for stage, seconds in (timings or {}).items():
                stages.setdefault(stage, []).append(seconds)
    return {
        "round_seconds": median([r["seconds"] for r in rounds]),
        "slowest_train_seconds": median([r["slowest_train_seconds"] for r in rounds]),
        "overhead_seconds": overhead,
        "goal_met": overhead <= case["goal_overhead_seconds"],
        "stage_median_seconds": {k: median(v) for k, v in stages.items()},
    }


def report_of(result: dict[str, Any]) -> Report:
    report = Report("Deployment round: seconds per round on real processes (loopback, TLS)")
    report.text(
        f"Three demo sites (one with DP-SGD), 3 local steps, preset {result['preset']}, "
        "registered sites over TLS, all processes on this machine "
        f"({result['machine'].get('nproc')} cores; load average at start "
        f"{result['load_at_start']}, at end {result['load_at_end']}). Steady rounds: "
        "rounds after the first without evaluation. Overhead: round seconds minus the "
        "slowest site's training; goal: at most 5 s (15 s with secure aggregation).",
    )
    rows = []
    for case in result["cases"]:
        s = case["summary"]
        rows.append([
            case["case"], s["round_seconds"], s["slowest_train_seconds"], s["overhead_seconds"],
            case["goal_overhead_seconds"], "met" if s["goal_met"] else "missed",
        ])  # fmt: skip
    report.table(
        ["case", "round s", "slowest train s", "overhead s", "goal s", "goal"], rows
    ).heading("Every round")
    report.table(
        ["case", "round", "seconds", "slowest train s", "overhead s", "evaluated"],
        [
            [c["case"], r["round"], r["seconds"], r["slowest_train_seconds"],
             r["overhead_seconds"], r["evaluated"]]
            for c in result["cases"] for r in c["rounds"]
        ],
    )  # fmt: skip
    report.heading("Where a train message's time goes (median over steady rounds and sites)")
    stages = ["received", "app_up", "model_built", "state_restored", "trained", "reply_built"]
    report.table(
        ["case", *stages],
        [
            [c["case"], *(c["summary"]["stage_median_seconds"].get(k) for k in stages)]
            for c in result["cases"]
        ],
    )
    return report


def main() -> None:
    parser = bench_parser(__doc__, name="deployment_round", quick="one round, plain only")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per federation")
    parser.add_argument("--keep", type=Path, default=None, help="keep the work folder here")
    parser.add_argument("--isolations", default=",".join(ISOLATIONS), help="comma-separated")
    parser.add_argument("--packing", default=",".join(PACKING), help="off,on: both, side by side")
    args = parser.parse_args()
    tic = start_run(args)
    if args.quick:
        args.rounds = 2
    isolations = args.isolations.split(",")
    packing = [{"off": False, "on": True}[p] for p in args.packing.split(",")]
    cases = [
        Case(i, s, p)
        for s in ((False,) if args.quick else (False, True))
        for i in isolations
        for p in packing
    ]
    load_at_start = " ".join(f"{x:.1f}" for x in os.getloadavg())
    results = []
    with scratch_dir("deployment-round-", args.keep) as work:
        for n, case in enumerate(cases):
            log.info("case %s", case.name)
            measured = run_case(case, work / f"case-{n}", args)
            measured["summary"] = summarise(measured)
            log.info("case %s: %s", case.name, measured["summary"])
            results.append(measured)
    fields = {
        "preset": "tiny", "rounds": args.rounds, "local_steps": 3, "sites": SITES,
        "load_at_start": load_at_start,
        "load_at_end": " ".join(f"{x:.1f}" for x in os.getloadavg()), "cases": results,
    }  # fmt: skip
    finish_run(args, "deployment_round", fields, report_of, start=tic)


if __name__ == "__main__":
    main()
