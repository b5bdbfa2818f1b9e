"""Helpers shared by the benchmarks and the experiments: command line, machine, statistics.

Kept tiny so every script takes the same common flags and records the same facts about the
machine (the 2-core box is shared and noisy, so a number without its context is
meaningless). Results are written by ``bench.report`` (``finish_run`` here assembles them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import timm
import torch

from bench.report import Report, write_results
from umedpt.config import load_site_config

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
SITES_DIR = REPO_ROOT / "bench" / "sites"  # the ../shared/data sites (experiments too)

log = logging.getLogger("bench")


def bench_parser(
    doc: str | None,
    *,
    name: str | None = None,
    threads: int | None = None,
    preset: str | None = None,
    quick: str | None = None,
    out: Path = RESULTS_DIR,
) -> argparse.ArgumentParser:
    """A parser described by ``doc``'s first paragraph, with the flags every script shares.

    Always ``--seed`` (0), ``--out`` (default ``out``: ``bench/results``) and ``--comment``;
    ``--name`` (the output file stem), ``--threads``, ``--preset`` and ``--quick`` (a smoke
    run; ``quick`` is its help) where the script passes their default.
    """
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    if preset is not None:
        parser.add_argument("--preset", default=preset)
    if threads is not None:
        parser.add_argument("--threads", type=int, default=threads)
    if quick is not None:
        parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--out", type=Path, default=out)
    if name is not None:
        parser.add_argument("--name", default=name, help="output file stem")
    parser.add_argument("--comment", default="", help="interpretation, stored with the results")
    return parser


def add_sites_arg(parser: argparse.ArgumentParser) -> None:
    """``--sites``: site files; ``site_files`` falls back to ``bench/sites``."""
    parser.add_argument("--sites", type=Path, nargs="*", default=None, help="default: bench/sites")


def site_files(args: argparse.Namespace) -> list[Path]:
    """The ``--sites`` files, else every ``bench/sites/*.toml``; absolute paths."""
    return [f.resolve() for f in (args.sites or sorted(SITES_DIR.glob("*.toml")))]


def sites_key(files: Sequence[Path]) -> dict[str, str]:
    """Site name -> a digest of its ``[[tasks]]`` tables, sorted by name: what a cached run on
    these sites depends on. Experiments put it in their cache keys, so runs on other sites
    (four then six, a changed split) never reuse each other's encoders; comments and
    ``state_dir`` do not count, and data paths stay relative to the site file (the key is
    the same on every machine)."""
    key = {}
    for file in files:
        tasks = tomllib.loads(Path(file).read_text()).get("tasks")
        digest = hashlib.sha256(json.dumps(tasks, sort_keys=True).encode()).hexdigest()
        key[load_site_config(file).name] = digest[:12]
    return dict(sorted(key.items()))


def start_run(args: argparse.Namespace) -> float:
    """INFO logging, ``--threads`` torch threads where the script has that flag; the start time."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    return time.perf_counter()


@contextmanager
def scratch_dir(prefix: str, keep: Path | None = None) -> Iterator[Path]:
    """A temporary work folder, removed afterwards; ``keep`` instead names one that stays."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def settings_of(args: argparse.Namespace, *keys: str) -> dict[str, Any]:
    """The named command-line values, to store with the results."""
    return {k: getattr(args, k) for k in keys}


def machine_info() -> dict[str, Any]:
    """CPU, memory and library versions, so results can be compared across machines."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "nproc": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        # The instruction set torch's CPU kernels use: AVX2 and AVX512 runs of the same seed
        # drift apart by points over a few hundred steps, so compare results only within one.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "CPU(s)", "Thread(s) per core"):
                info[key.strip()] = value.strip()
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            info["MemTotal"] = fh.readline().split(":", 1)[1].strip()
    except OSError:
        pass
    return info


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def finish_run(
    args: argparse.Namespace,
    benchmark: str,
    fields: dict[str, Any],
    report: Callable[[dict[str, Any]], Report],
    *,
    start: float | None = None,
) -> dict[str, Any]:
    """Assemble and write a script's result (``bench.report.write_results``): its name, the
    machine, ``fields``, the wall time since ``start`` (where given), ``--comment`` (shown
    under the report's notes heading) and ``report(result)``. Files are named by ``--name``
    where the script has that flag, else by ``benchmark``."""
    result: dict[str, Any] = {"benchmark": benchmark, "machine": machine_info(), **fields}
    if start is not None:
        result["total_seconds"] = time.perf_counter() - start
    result["comment"] = args.comment
    path = write_results(args.out, getattr(args, "name", benchmark), result, report(result))
    log.info("wrote %s and its .md", path)
    return result
