"""Helpers for the benchmarks that drive Flower's Ray simulation (``overhead.py``, ``scale.py``).

- ``demo_sites``: N synthetic demo sites with unique names (several demo federations written
  with different seeds; each site file is copied next to its original under a unique name, so
  its relative data paths stay valid).
- ``simulate_in_subprocess``: one ``umedpt_fl.simulation.simulate`` run in a fresh Python process
  (Ray is started and shut down inside it, and one variant's actors, caches or memory cannot
  leak into the next variant's timings); returns the run's ``report.json`` plus the process'
  own wall times.
- ``round_rows``: per-round wall time vs the sites' own training time from a report.

    PYTHONPATH=. python3 -m bench.simtools --help   (the subprocess entry point)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT

SITE_NAME_LINE = re.compile(r'^name = "([^"]+)"$', re.MULTILINE)


def demo_sites(root: Path, count: int, *, images_per_site: int = 150) -> list[Path]:
    """``count`` demo site files with unique site names (4 per demo seed, seed 0 first)."""
    from umedpt.data.demo import write_demo_federation

    files: list[Path] = []
    seed = 0
    while len(files) < count:
        folder = root / f"seed-{seed}"
        originals = write_demo_federation(folder, seed=seed, images_per_site=images_per_site)
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
    subprocess.run(command, check=True, env=env, timeout=timeout, cwd=REPO_ROOT)
    payload = json.loads(result_file.read_text())
    payload["seconds"] = time.perf_counter() - start  # includes Python + imports
    payload["ray_worker_niceness"] = env["RAY_worker_niceness"]
    return payload


def round_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per round: wall seconds, the sites' train-seconds (sum, max) and wall / sum."""
    rows = []
    for record in report["rounds"]:
        train = [m["train-seconds"] for m in record["train_metrics"].values()]
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


def _worker(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one simulate() run (used by the benchmarks)")
    parser.add_argument("sites", type=Path, nargs="+")
    parser.add_argument("--settings", required=True, help="RunSettings fields as JSON")
    parser.add_argument("--cpus-per-site", type=float, default=1.0)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)

    from umedpt_fl.settings import RunSettings
    from umedpt_fl.simulation import simulate

    settings = RunSettings(**json.loads(args.settings))
    start = time.perf_counter()
    report = simulate(args.sites, settings, cpus_per_site=args.cpus_per_site)
    seconds = time.perf_counter() - start
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps({"report": report, "simulate_seconds": seconds}))


if __name__ == "__main__":
    _worker()
