"""A deployed site's data load per Flower message: decoding every image vs the site's disk cache.

Why: in deployment (not Ray simulation) Flower starts a fresh ``flwr-clientapp`` process for
every message, so a site loads its data twice per round. ``umedpt.data.cache`` keeps the
decoded samples in the site's state folder. For each site file (default: ``bench/sites``, the
real datasets of ``../shared/data``) this times, each in a fresh Python process as a
ClientApp would:

- ``no-cache``: ``load_task`` without a cache folder (what every message cost before);
- ``cold``: with an empty cache folder: decode and write the cache (the first round);
- ``warm``: with the cache written: list the files, check the key, read the cache (every
  later round).

The variants are interleaved per repetition (no-cache cold warm, then warm cold no-cache, ...)
so slow drift on the shared machine favours none; the ratios are per repetition, then the
median. ``load s`` is the time inside the process (``load_task`` of every task); ``process s``
the whole subprocess (interpreter, imports of torch and umedpt, load).

    PYTHONPATH=. python3 bench/site_cache.py               # ~2 min on 2 cores
    PYTHONPATH=. python3 bench/site_cache.py --reps 1 --out /tmp/bench
"""

from __future__ import annotations

from federation.entry import enter_command_process

enter_command_process()  # a process entry: no Flower telemetry, whatever imports Flower

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.report import Report

VARIANTS = ("no-cache", "cold", "warm")
# bench.common is imported inside the functions that need it: it imports timm, which the
# child process (a stand-in for a ClientApp) must not pay for.


def child(site_file: str, cache_dir: str) -> None:
    """In the fresh process: load every task of the site; print what it took as JSON."""
    import warnings

    from umedpt.config import load_site_config
    from umedpt.data.loading import load_task

    warnings.simplefilter("ignore")  # bccd's dropped-box warning, the same in every variant
    site = load_site_config(site_file)
    tic = time.perf_counter()
    loaded = [load_task(t, cache_dir=Path(cache_dir) if cache_dir else None) for t in site.tasks]
    print(
        json.dumps(
            {
                "load_seconds": time.perf_counter() - tic,
                "from_cache": all(x.from_cache for x in loaded),
                "samples": sum(len(s) for x in loaded for s in x.data.splits.values()),
                "cache_bytes": sum(x.cache_file.stat().st_size for x in loaded if x.cache_file),
            }
        )
    )


def run_child(site_file: Path, cache_dir: Path | None) -> dict[str, Any]:
    from bench.common import REPO_ROOT

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, __file__, "--child", str(site_file), str(cache_dir or "")]
    tic = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - tic
    if done.returncode != 0:
        raise RuntimeError(f"{site_file}: the load failed:\n{done.stderr[-2000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process_seconds": seconds}


def measure_site(site_file: Path, reps: int, work: Path) -> dict[str, Any]:
    """``reps`` counterbalanced rounds of the three variants for one site."""
    import shutil

    from bench.common import log, median

    cache = work / site_file.stem / "cache"
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for rep in range(reps):
        order = VARIANTS if rep % 2 == 0 else tuple(reversed(VARIANTS))
        for variant in order:
            if variant == "cold":
                shutil.rmtree(cache, ignore_errors=True)
            elif variant == "warm" and not cache.exists():
                run_child(site_file, cache)  # warm needs a written cache: not timed
            result = run_child(site_file, None if variant == "no-cache" else cache)
            expected_hit = variant == "warm"
            if result["from_cache"] != expected_hit:
                raise RuntimeError(f"{site_file.stem} {variant}: from_cache {result['from_cache']}")
            runs[variant].append(result)
            log.info("%s %s: %.2f s", site_file.stem, variant, result["load_seconds"])
    ratios = {
        "no_cache_over_warm": [
            a["load_seconds"] / b["load_seconds"]
            for a, b in zip(runs["no-cache"], runs["warm"], strict=True)
        ],
        "cold_over_no_cache": [
            a["load_seconds"] / b["load_seconds"]
            for a, b in zip(runs["cold"], runs["no-cache"], strict=True)
        ],
        "process_no_cache_over_warm": [
            a["process_seconds"] / b["process_seconds"]
            for a, b in zip(runs["no-cache"], runs["warm"], strict=True)
        ],
    }
    return {
        "site": site_file.stem,
        "samples": runs["no-cache"][0]["samples"],
        "cache_bytes": runs["cold"][0]["cache_bytes"],
        "runs": runs,
        "median_load_seconds": {v: median([r["load_seconds"] for r in runs[v]]) for v in VARIANTS},
        "median_process_seconds": {
            v: median([r["process_seconds"] for r in runs[v]]) for v in VARIANTS
        },
        "ratios": ratios,
        "median_ratios": {k: median(v) for k, v in ratios.items()},
    }


def report_of(result: dict[str, Any]) -> Report:
    machine = result["machine"]
    rows = []
    for s in result["sites"]:
        load, proc, ratio = s["median_load_seconds"], s["median_process_seconds"], s["ratios"]
        rows.append(
            [
                s["site"],
                s["samples"],
                f"{s['cache_bytes'] / 1e6:.1f} MB",
                f"{load['no-cache']:.2f}",
                f"{load['cold']:.2f}",
                f"{load['warm']:.3f}",
                f"**{s['median_ratios']['no_cache_over_warm']:.0f}x**",
                ", ".join(f"{r:.0f}" for r in ratio["no_cache_over_warm"]),
                f"{s['median_ratios']['cold_over_no_cache']:.2f}x",
                f"{proc['no-cache']:.1f} / {proc['warm']:.1f}",
            ]
        )
    header = [
        "site",
        "samples",
        "cache file",
        "no-cache load s",
        "cold load s (decode + write)",
        "warm load s (cache)",
        "no-cache / warm",
        "per-rep ratios",
        "cold / no-cache",
        "process s no-cache / warm",
    ]
    report = Report("A deployed site's data load per message: decode vs the site's disk cache")
    report.text(
        "Each load in a fresh Python process, as Flower's deployment engine starts a "
        "`flwr-clientapp` per message (twice per round). `no-cache`: decode every image "
        "(before this cache); `cold`: decode and write `<state_dir>/cache/` (the first "
        "round); `warm`: list the files, check the key, read the cache (every later "
        f"round). Medians of {result['reps']} counterbalanced repetitions, measured side "
        f"by side in one run on {machine.get('Model name', 'a CPU')}, "
        f"{machine.get('nproc')} cores (shared with other jobs, noisy); ratios per "
        "repetition, then the median. `process s` includes starting Python and "
        "importing torch and umedpt."
    )
    return report.table(header, rows)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from bench.common import (
        add_sites_arg,
        bench_parser,
        finish_run,
        scratch_dir,
        site_files,
        start_run,
    )

    parser = bench_parser(__doc__, name="site_cache")
    add_sites_arg(parser)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    start = start_run(args)
    with scratch_dir("bench-site-cache-") as work:
        sites = [measure_site(f, args.reps, work) for f in site_files(args)]
    fields = {"reps": args.reps, "variants": list(VARIANTS), "sites": sites}
    return finish_run(args, "site_cache", fields, report_of, start=start)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    else:
        main()
