"""Helpers for the federation benchmarks (``overhead.py``, ``scale.py``, ``wire.py``) and
experiments (``experiments/recipe.py``, ``leave_one_site_out.py``, ``privacy_utility.py``).

- ``federation_settings``: the RunSettings fields of a benchmark run writing under one folder.
- ``federate_in_process``: one ``server.federation.run_federation`` with the real ClientApp in
  this process (``umedpt_fl.inprocess.ClientAppGrid``, no Ray).
- ``demo_sites``: N synthetic demo sites with unique names (several demo federations written
  with different seeds; each site file is copied next to its original under a unique name, so
  its relative data paths stay valid).
- ``simulate_in_subprocess``: one ``umedpt_fl.simulation.simulate`` run in a fresh Python process
  (Ray is started and shut down inside it, and one variant's actors, caches or memory cannot
  leak into the next variant's timings); returns the run's ``report.json`` plus the process'
  own wall times and the peak memory of its process tree (``TreeMemory``).
- ``simulate_rounds``: ``simulate_in_subprocess`` of the tiny preset plus its ``round_rows``.
- ``round_rows``: per-round wall time vs the sites' own training time from a report;
  ``round_summary``: their medians over the timed rounds.
- ``add_round_args``: the ``--rounds``, ``--local-steps`` and ``--images-per-site`` flags.

    PYTHONPATH=. python3 -m bench.simtools --help   (the subprocess entry point)

The scripts that use this are process entries and switch Flower's telemetry off before
anything imports Flower (``federation.entry``); so does the subprocess entry point.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import REPO_ROOT, median
from federation import wire

if TYPE_CHECKING:
    from umedpt.config import SiteConfig
    from umedpt.model import UMedPTModel

SITE_NAME_LINE = re.compile(r'^name = "([^"]+)"$', re.MULTILINE)


def federation_settings(out: Path, **fields: Any) -> dict[str, Any]:
    """RunSettings ``fields`` of a run whose report is written to ``out``, sites' state below."""
    return {**fields, "out_dir": str(out), "state_root": str(out / "sites")}


def federate_in_process(site_files: Sequence[Path], out: Path, **fields: Any) -> dict[str, Any]:
    """One federation through the real ClientApp, one node per site file, in this process;
    returns its report. ``fields``: RunSettings fields, and an aggregation rule's options by
    field name (``RunSettings.of``)."""
    from client.app import app as client_app
    from federation.settings import RunSettings
    from server.federation import run_federation
    from umedpt_fl.inprocess import ClientAppGrid

    settings = RunSettings.of(
        site_configs=",".join(str(Path(f).resolve()) for f in site_files),
        **federation_settings(out, **fields),
    )
    nodes = {100 + i: {"partition-id": i} for i in range(len(site_files))}
    # Not recording the messages: each holds the weights, and a long run would keep them all.
    grid = ClientAppGrid(client_app, nodes, settings.to_run_config(), record_messages=False)
    return run_federation(grid, settings)


def add_round_args(
    parser: argparse.ArgumentParser, *, rounds: int, local_steps: int, images_per_site: int
) -> None:
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--local-steps", type=int, default=local_steps)
    parser.add_argument("--images-per-site", type=int, default=images_per_site)


def check_rounds(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Rounds 2 .. R-1 are timed: round 1 (start-up) and the final-eval round are excluded."""
    if args.rounds < 3:
        parser.error("--rounds must be >= 3 (round 1 and the final-eval round are excluded)")


def demo_sites(root: Path, count: int, *, images_per_site: int = 150) -> list[Path]:
    """``count`` demo site files with unique site names (4 per demo seed, seed 0 first)."""
    from umedpt.data.demo import write_demo_federation

    files: list[Path] = []
    seed = 0
    while len(files) < count:
        folder = root / f"seed-{seed}"
        originals = write_demo_federation(
            folder, seed=seed, images_per_site=images_per_site, unlabelled=False
        )
        for original in originals:
            text = original.read_text()
            name = SITE_NAME_LINE.search(text)
            assert name is not None, f"no site name in {original}"
            unique = f"{name.group(1)}-s{seed}"
            text = SITE_NAME_LINE.sub(f'name = "{unique}"', text, count=1)
            text = text.replace(
                f'state_dir = "state/{name.group(1)}"', f'state_dir = "state/{unique}"'
            )
            target = original.with_name(f"{unique}.toml")
            target.write_text(text)
            files.append(target)
        seed += 1
    return files[:count]


MEMORY_SAMPLE_SECONDS = 0.5


class TreeMemory:
    """Peak memory of a process and all its descendants (the simulate process, Ray's
    raylet and GCS, the sites' actors), sampled from /proc: summed RSS (counts shared pages
    such as torch's libraries once per process) and summed PSS (shares them out: what the
    simulation as a whole holds)."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.rss = self.pss = 0
        self.processes = 0

    def tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # gone meanwhile
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        found, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo += children.get(pid, [])
        return found

    def sample(self) -> None:
        rss = pss = 0
        pids = self.tree()
        for pid in pids:
            try:
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
            except (OSError, ValueError, IndexError):
                continue
        self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)
        self.processes = max(self.processes, len(pids))

    def peaks(self) -> dict[str, float]:
        gib = 1024**3
        return {"rss_gib": self.rss / gib, "pss_gib": self.pss / gib, "processes": self.processes}


def simulate_in_subprocess(
    site_files: Sequence[Path],
    settings: dict[str, Any],
    *,
    cpus_per_site: float,
    result_file: Path,
    timeout: float = 1800,
) -> dict[str, Any]:
    """Run ``simulate`` in a fresh process; returns {"report", "seconds", "simulate_seconds"}."""
    command = [
        sys.executable,
        "-m",
        "bench.simtools",
        "--settings",
        json.dumps(settings),
        "--cpus-per-site",
        str(cpus_per_site),
        "--result",
        str(result_file),
        *[str(f) for f in site_files],
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    # Ray starts its workers (here: the sites' ClientApp actors) at nice 15. On a shared
    # machine that starves the sites' training behind everyone else's processes while the
    # ServerApp runs at nice 0, which distorts the timings; run them at normal priority.
    env.setdefault("RAY_worker_niceness", "0")
    start = time.perf_counter()
    with subprocess.Popen(command, env=env, cwd=REPO_ROOT) as process:
        peak = TreeMemory(process.pid)
        while process.poll() is None:
            if time.perf_counter() - start > timeout:
                process.kill()
                raise subprocess.TimeoutExpired(command, timeout)
            peak.sample()
            time.sleep(MEMORY_SAMPLE_SECONDS)
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, command)
    payload = json.loads(result_file.read_text())
    payload["seconds"] = time.perf_counter() - start  # includes Python + imports
    payload["peak_memory"] = peak.peaks()
    payload["ray_worker_niceness"] = env["RAY_worker_niceness"]
    return payload


def simulate_rounds(
    label: str,
    site_files: Sequence[Path],
    work: Path,
    *,
    cpus_per_site: float,
    **fields: Any,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``simulate_in_subprocess`` of the tiny preset (RunSettings ``fields``) writing under
    ``work/<label>``; returns its payload and ``round_rows``."""
    payload = simulate_in_subprocess(
        site_files,
        federation_settings(work / label, preset="tiny", **fields),
        cpus_per_site=cpus_per_site,
        result_file=work / f"{label}.json",
    )
    return payload, round_rows(payload["report"])


def round_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per round: wall seconds, the sites' train-seconds (sum, max) and wall / sum."""
    rows = []
    for record in report["rounds"]:
        train = [m[wire.TRAIN_SECONDS] for m in record["train_metrics"].values()]
        rows.append(
            {
                "round": record["round"],
                "seconds": record["seconds"],
                "sites": len(train),
                "train_seconds_sum": sum(train),
                "train_seconds_max": max(train),
                "evaluated": bool(record["eval_metrics"]),
                "ratio": record["seconds"] / sum(train),
            }
        )
    return rows


def round_summary(rows: list[dict[str, Any]], last: int) -> dict[str, Any]:
    """Medians over the timed rounds 2 .. ``last`` (round 1 holds Ray and actor start-up)."""
    measured = [r for r in rows if 2 <= r["round"] <= last]
    return {
        "rounds": rows,
        "measured_rounds": [r["round"] for r in measured],
        "median_ratio": median([r["ratio"] for r in measured]),
        "median_round_seconds": median([r["seconds"] for r in measured]),
        "median_train_seconds_sum": median([r["train_seconds_sum"] for r in measured]),
        "first_round_seconds": rows[0]["seconds"],
    }


def _worker(argv: Sequence[str] | None = None) -> None:
    from federation.entry import enter_command_process

    enter_command_process()  # this process' entry: before simulate imports Flower
    parser = argparse.ArgumentParser(description="one simulate() run (used by the benchmarks)")
    parser.add_argument("sites", type=Path, nargs="+")
    parser.add_argument("--settings", required=True, help="RunSettings fields as JSON")
    parser.add_argument("--cpus-per-site", type=float, default=1.0)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)

    from federation.settings import RunSettings
    from umedpt_fl.simulation import simulate

    settings = RunSettings(**json.loads(args.settings))
    start = time.perf_counter()
    report = simulate(args.sites, settings, cpus_per_site=args.cpus_per_site)
    seconds = time.perf_counter() - start
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps({"report": report, "simulate_seconds": seconds}))


if __name__ == "__main__":
    _worker()


def federated_site_model(site: SiteConfig, run_dir: Path, preset: str) -> UMedPTModel:
    """The global weights with the site's own heads (and, if kept at home, its blocks)."""
    from umedpt import contract
    from umedpt.checkpoint import load_weights, read_header
    from umedpt.model import UMedPTModel
    from umedpt.models.presets import model_config

    model = UMedPTModel(model_config(preset), site.tasks)
    have = {contract.group_of(k) for k in model.state_dict()}
    global_dir = run_dir / "global"
    load_weights(
        model, global_dir, groups=[g for g in read_header(global_dir)["groups"] if g in have]
    )
    (local,) = (run_dir / "sites" / site.name / "runs").glob("*/latest-heads")
    load_weights(model, local, groups=read_header(local)["groups"])
    return model


def cached(path: Path, compute: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """The unit's result from ``path``, or computed now and written there (atomically).

    One process at a time computes a unit (a lock beside it); a unit a killed process left
    half done is started afresh.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        if path.is_file():
            return json.loads(path.read_text())
        shutil.rmtree(path.parent / path.stem, ignore_errors=True)
        return _compute(path, compute)


def _compute(path: Path, compute: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    result = compute(path.parent / path.stem)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)
    shutil.rmtree(path.parent / path.stem, ignore_errors=True)  # the run's weights: scored
    return result
