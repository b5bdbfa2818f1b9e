"""A 500-slice DICOM site: the first pass (read headers, decode, window, resize, write the
cache) vs a later round (the site's disk cache), next to the same images as PNG files.

Why: a hospital's site reads DICOM as stored (issue 21). The first round pays for pydicom
(header parsing, RLE decoding of every third file, rescale and window); every later round
must read the decoded-image cache (``umedpt.data.cache``) as fast as the existing formats do,
so it takes the headers from the site's header index (``umedpt.data.dicom_index``).
The site is the demo DICOM generator's (``umedpt.data.demo_dicom``), CT-sized slices
(``--pixels``, default 512) of ``--patients`` x ``--slices`` (default 50 x 10 = 500), resized to
64 px; the PNG site holds the same windowed slices as 8-bit PNGs in ``class-folders``.
Each load runs in a fresh Python process, as a deployed ClientApp does; the variants are
interleaved per repetition.

    PYTHONPATH=. python3 bench/dicom_read.py              # ~2 min on 2 cores
    PYTHONPATH=. python3 bench/dicom_read.py --reps 1 --patients 10 --out /tmp/bench
"""

from __future__ import annotations

from federation.entry import enter_command_process

enter_command_process()  # a process entry: no Flower telemetry, whatever imports Flower

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.report import Report

FORMATS = ("dicom", "png")
PASSES = ("first", "cached")


def child(site_file: str, cache_dir: str) -> None:
    """In the fresh process: load every task of the site; print what it took as JSON."""
    import warnings

    from umedpt.config import load_site_config
    from umedpt.data.loading import load_task

    warnings.simplefilter("ignore")
    site = load_site_config(site_file)
    tic = time.perf_counter()
    loaded = [load_task(t, cache_dir=Path(cache_dir)) for t in site.tasks]
    print(
        json.dumps(
            {
                "load_seconds": time.perf_counter() - tic,
                "from_cache": all(x.from_cache for x in loaded),
                "samples": sum(len(s) for x in loaded for s in x.data.splits.values()),
            }
        )
    )


def run_child(site_file: Path, cache_dir: Path) -> dict[str, Any]:
    from bench.common import REPO_ROOT

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, __file__, "--child", str(site_file), str(cache_dir)]
    tic = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - tic
    if done.returncode != 0:
        raise RuntimeError(f"{site_file}: the load failed:\n{done.stderr[-2000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process_seconds": seconds}


def write_sites(work: Path, patients: int, slices: int, pixels: int) -> dict[str, Path]:
    """The DICOM site and the same windowed slices as a PNG class-folders site."""
    import tomli_w
    from PIL import Image

    from umedpt.config import load_site_config
    from umedpt.data.demo_dicom import CLASSES, LUNG_WINDOW, write_dicom_site
    from umedpt.data.dicom import decode_dicom
    from umedpt.data.readers import read_records

    dicom_file = write_dicom_site(work, patients=patients, slices=slices, size=pixels)
    text = dicom_file.read_text().replace(f"image_size = {pixels}", "image_size = 64")
    dicom_file.write_text(text)
    task = load_site_config(dicom_file).tasks[0]
    png_root = work / "png"
    for i, record in enumerate(read_records(task)):
        rgb = decode_dicom(record.image.path, window=LUNG_WINDOW)
        folder = png_root / CLASSES[record.targets["label"]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb[:, :, 0]).save(folder / f"slice-{i:04d}.png")
    png_task = {
        "name": "ct-nodules", "type": "classification", "format": "class-folders",
        "path": "png", "classes": list(CLASSES), "image_size": 64,
    }  # fmt: skip
    png_file = work / "png-site.toml"
    png_file.write_text(tomli_w.dumps({"name": "png-site", "tasks": [png_task]}))
    return {"dicom": dicom_file, "png": png_file}


def measure(sites: dict[str, Path], reps: int, work: Path) -> dict[str, Any]:
    from bench.common import log, median
    from umedpt.config import load_site_config
    from umedpt.data.dicom_index import FOLDER as HEADER_INDEX

    runs: dict[str, list[dict[str, Any]]] = {f"{f} {p}": [] for f in FORMATS for p in PASSES}
    for rep in range(reps):
        order = FORMATS if rep % 2 == 0 else tuple(reversed(FORMATS))
        for fmt in order:
            cache = work / "cache" / fmt
            shutil.rmtree(cache, ignore_errors=True)
            # a first pass parses every header too: no header index from an earlier pass
            shutil.rmtree(load_site_config(sites[fmt]).state_dir / HEADER_INDEX, ignore_errors=True)
            for which in PASSES:
                result = run_child(sites[fmt], cache)
                if result["from_cache"] != (which == "cached"):
                    raise RuntimeError(f"{fmt} {which}: from_cache {result['from_cache']}")
                runs[f"{fmt} {which}"].append(result)
                log.info("%s %s: %.2f s", fmt, which, result["load_seconds"])
    medians = {k: median([r["load_seconds"] for r in v]) for k, v in runs.items()}
    process = {k: median([r["process_seconds"] for r in v]) for k, v in runs.items()}
    return {"runs": runs, "median_load_seconds": medians, "median_process_seconds": process}


def report_of(result: dict[str, Any]) -> Report:
    machine, load = result["machine"], result["median_load_seconds"]
    samples = result["samples"]
    rows = [
        [
            name,
            samples,
            f"{load[name]:.3f}",
            f"{samples / load[name]:.0f}",
            f"{result['median_process_seconds'][name]:.1f}",
        ]
        for name in load
    ]
    report = Report("A 500-slice DICOM site: first pass vs the cache, next to PNG")
    report.text(
        f"{samples} CT-like slices of {result['pixels']}x{result['pixels']} px (every third "
        "RLE-compressed; RescaleIntercept, a lung window), resized to 64 px, and the same "
        "windowed slices as 8-bit PNGs (`class-folders`). `first`: read headers, decode, "
        "window, resize and write `<state_dir>/cache/` and the DICOM header index (a site's "
        "first round); `cached`: list and stat the files, take the headers from the index, "
        "check the key, read the cache (every later round). Each load in a "
        f"fresh Python process; medians of {result['reps']} repetitions on "
        f"{machine.get('Model name', 'a CPU')}, {machine.get('nproc')} cores (shared, noisy). "
        "`process s` includes starting Python and importing torch and umedpt."
    )
    return report.table(["load", "samples", "load s", "samples/s", "process s"], rows)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from bench.common import bench_parser, finish_run, scratch_dir, start_run

    parser = bench_parser(__doc__, name="dicom_read")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--patients", type=int, default=50)
    parser.add_argument("--slices", type=int, default=10)
    parser.add_argument("--pixels", type=int, default=512)
    args = parser.parse_args(argv)
    start = start_run(args)
    with scratch_dir("bench-dicom-read-") as work:
        sites = write_sites(work, args.patients, args.slices, args.pixels)
        measured = measure(sites, args.reps, work)
    fields = {
        "reps": args.reps,
        "samples": args.patients * args.slices,
        "pixels": args.pixels,
        **measured,
    }
    return finish_run(args, "dicom_read", fields, report_of, start=start)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    else:
        main()
