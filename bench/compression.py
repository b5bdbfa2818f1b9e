"""Compressed updates (``--compression``): bytes per round per direction, encode/decode time,
and (``--accuracy``) the accuracy cost against float32.

Why: a hospital's uplink is often the slowest part of a round. This measures, on the
preset's global weights (``--preset``, default swin-t; encoder and every shared block, as
``--share-blocks`` sends them), what one site's training message (down) and reply (up)
weigh under each codec, as serialised npy payloads (``strategies.arrays_nbytes``, what
report.json counts), and how long encoding and decoding take on each side (median of
``--repeats``; the change a site sends is random, std 2e-4, about what 5 AdamW steps at
lr 1e-4 move a weight). No training is needed for that. Goal: 0.5x of float32 for
fp16/bf16, about 0.25x for int8 (up; int8 runs send their weights down in bf16).

``--accuracy`` runs the recipe benchmark's federation (``experiments/recipe.py``'s defaults:
the bench/sites tasks, 300 steps per task, 5 local steps, 3 seeds) once per codec and seed,
through the real ClientApp in process, and scores the final global weights with each site's
heads on the test split. Each (codec, seed) is cached as JSON under ``--work/<key>``, so a
rerun skips what is done (several processes may share the work with ``--codecs``/
``--seeds``). Goal: within 0.2 points of float32 on every task for fp16/bf16, 0.5 for int8.

    PYTHONPATH=. python3 bench/compression.py                      # bytes and time, ~1 min
    PYTHONPATH=. python3 bench/compression.py --accuracy           # + accuracy (hours on CPU)
    PYTHONPATH=. python3 bench/compression.py --accuracy --quick --out /tmp/bench  # smoke
"""

from __future__ import annotations

from federation.entry import enter_command_process

enter_command_process()  # a process entry: before Flower is imported

import argparse
import hashlib
import json
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

from bench.common import add_sites_arg, bench_parser, finish_run, site_files, sites_key, start_run
from bench.report import Report
from bench.simtools import cached, federate_in_process, federated_site_model
from federation.codecs import codec_names, create_codec, encode_with_feedback
from federation.compression import (
    change_from,
    decode_update,
    decode_weights,
    encode_weights,
    to_record,
    weights_of,
)
from federation.settings import RunSettings
from server.federation import initial_weights
from strategies import arrays_nbytes
from umedpt.config import load_site_config
from umedpt.data.demo import write_demo_federation
from umedpt.models.presets import model_config
from umedpt.pretrain import load_runs
from umedpt.tasks import get_task_type
from umedpt.training.trainer import MultiTaskTrainer, TrainConfig

log = logging.getLogger("bench.compression")
MB = 1e6
WORK_DIR = Path(__file__).resolve().parent / ".work" / "compression"
GOALS = {"none": (1.0, 1.0), "fp16": (0.5, 0.5), "bf16": (0.5, 0.5), "int8": (0.5, 0.25)}
CHANGE_STD = 2e-4  # of the synthetic change a site sends (bytes and time do not depend on it)
ACCURACY_GOAL = {"fp16": 0.2, "bf16": 0.2, "int8": 0.5}  # points of the primary metric


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(
        __doc__,
        name="compression",
        threads=1,
        preset="swin-t",
        quick="bytes/time: 1 repeat; accuracy: demo sites, tiny preset, 4 steps, seed 0",
    )
    add_sites_arg(parser)
    parser.add_argument("--codecs", nargs="*", default=list(codec_names()), choices=codec_names())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--accuracy", action="store_true", help="also the accuracy cost")
    parser.add_argument("--accuracy-preset", default="tiny")
    parser.add_argument("--steps", type=int, default=300, help="gradient steps per task")
    parser.add_argument("--local-steps", type=int, default=RunSettings().local_steps)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=WORK_DIR, help="cache folder")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.steps, args.local_steps, args.seeds = 1, 4, 2, [0]
        if args.work == WORK_DIR:
            args.work = WORK_DIR.with_name("compression-quick")
    if args.steps % args.local_steps:
        parser.error("--steps must be a multiple of --local-steps (whole rounds)")
    return args


# -- bytes and time ----------------------------------------------------------------------
def timed(fn: Callable[[], Any], repeats: int) -> tuple[Any, float]:
    """``fn()``'s last result and its median wall time in seconds."""
    times, result = [], None
    for _ in range(repeats):
        tic = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - tic)
    return result, statistics.median(times)


def codec_row(
    name: str, weights: dict[str, np.ndarray], change: dict[str, np.ndarray], repeats: int
) -> dict[str, Any]:
    """One site's round under codec ``name``: bytes and seconds per direction and side, and
    how far the weights the server rebuilds are from ``weights + change``."""
    codec = create_codec(name)
    keys = list(weights)
    (down, _), down_encode = timed(lambda: encode_weights(weights, name), repeats)
    received, down_decode = timed(lambda: decode_weights(down, name), repeats)
    # a site trains from what it received: its weights are those plus its change
    trained = {k: (received[k] + change[k]).astype(np.float32) for k in keys}
    residual = {k: np.zeros_like(v) for k, v in weights.items()} if codec.error_feedback else None

    def site_encode() -> ArrayRecord:
        if not codec.sends_change:
            return to_record(codec.encode(trained))
        sent = change_from(trained, received)
        if codec.error_feedback:
            return to_record(encode_with_feedback(codec, sent, residual)[0])
        return to_record(codec.encode(sent))

    up, up_encode = timed(site_encode, repeats)

    def server_decode() -> ArrayRecord:
        decoded = decode_update(weights_of(up), weights, keys, codec)
        return ArrayRecord({k: Array(v) for k, v in decoded.items()})

    decoded, up_decode = timed(server_decode, repeats)
    # the change the server rebuilds against the site's true change
    error = [decoded[k].numpy().astype(np.float64) - weights[k] - change[k] for k in keys]
    rms = float(np.sqrt(sum(float(np.sum(e**2)) for e in error)))
    norm = float(np.sqrt(sum(float(np.sum(change[k].astype(np.float64) ** 2)) for k in keys)))
    return {
        "codec": name,
        "downlink_codec": codec.downlink,
        "bytes_down": arrays_nbytes(down),
        "bytes_up": arrays_nbytes(up),
        "seconds_server_encode": down_encode,
        "seconds_site_decode": down_decode,
        "seconds_site_encode": up_encode,
        "seconds_server_decode": up_decode,
        "relative_error_of_change": rms / norm if norm else 0.0,  # one round, before feedback
    }


def bytes_and_time(args: argparse.Namespace) -> dict[str, Any]:
    global_arrays = initial_weights(RunSettings(preset=args.preset, share_blocks=True))
    weights = {k: v.numpy() for k, v in global_arrays.items()}
    rng = np.random.default_rng(args.seed)
    # a round's change: about what 5 AdamW steps at lr 1e-4 move a weight
    change = {
        k: rng.normal(0, CHANGE_STD, v.shape).astype(np.float32)
        if v.dtype == np.float32
        else np.zeros_like(v)
        for k, v in weights.items()
    }
    rows = [codec_row(name, weights, change, args.repeats) for name in args.codecs]
    base = next(r for r in rows if r["codec"] == "none") if "none" in args.codecs else None
    for row in rows:
        if base:
            row["ratio_down"] = row["bytes_down"] / base["bytes_down"]
            row["ratio_up"] = row["bytes_up"] / base["bytes_up"]
            goal_down, goal_up = GOALS[row["codec"]]
            row["goal_met"] = row["ratio_down"] <= goal_down * 1.01 and row["ratio_up"] <= (
                goal_up * 1.02
            )
    return {
        "preset": args.preset,
        "encoder": model_config(args.preset).encoder,
        "tensors": len(weights),
        "float32_bytes": sum(v.nbytes for v in weights.values()),
        "rows": rows,
    }


# -- accuracy ------------------------------------------------------------------------------
def federated(files: Sequence[Path], codec: str, seed: int, args: argparse.Namespace, work: Path):
    rounds = args.steps // args.local_steps
    tic = time.perf_counter()
    report = federate_in_process(
        files,
        work / "run",
        num_server_rounds=rounds,
        eval_every=rounds,
        local_steps=args.local_steps,
        preset=args.accuracy_preset,
        seed=seed,
        tracking="none",
        compression=codec,
    )
    if report["status"] != "completed":
        raise RuntimeError(f"{codec} seed {seed}: the run did not complete")
    scores: dict[str, dict[str, float]] = {}
    for file in files:
        site = load_site_config(file)
        trainer = MultiTaskTrainer(
            federated_site_model(site, work / "run", args.accuracy_preset),
            load_runs(site.tasks),
            TrainConfig(device="cpu"),
        )
        for task, metrics in trainer.evaluate("test").items():
            primary = get_task_type(next(t.type for t in site.tasks if t.name == task))
            scores[task] = {
                "metric": primary.primary_metric,
                "value": metrics[primary.primary_metric],
            }
    return {"seconds": time.perf_counter() - tic, "traffic": report["traffic"], "test": scores}


def accuracy(args: argparse.Namespace) -> dict[str, Any]:
    files = site_files(args)
    if args.quick and not args.sites:
        files = write_demo_federation(args.work / "demo", seed=0, images_per_site=30)
    key = {
        "sites": sites_key(files),
        "steps": args.steps,
        "local_steps": args.local_steps,
        "preset": args.accuracy_preset,
        "threads": args.threads,
    }
    folder = args.work / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps(key, indent=1))
    units: dict[str, dict[int, Any]] = {}
    for codec in args.codecs:
        for seed in args.seeds:
            log.info("accuracy: %s, seed %d", codec, seed)
            units.setdefault(codec, {})[seed] = cached(
                folder / f"{codec}-seed{seed}.json",
                lambda work, c=codec, s=seed: federated(files, c, s, args, work),
            )
    tasks = sorted({t for runs in units.values() for u in runs.values() for t in u["test"]})
    summary = []
    for task in tasks:
        row: dict[str, Any] = {"task": task}
        for codec, runs in units.items():
            values = [u["test"][task]["value"] for u in runs.values() if task in u["test"]]
            row["metric"] = next(iter(runs.values()))["test"][task]["metric"]
            row[codec] = statistics.fmean(values) if values else None
        if row.get("none") is not None:
            for codec in ACCURACY_GOAL:
                if row.get(codec) is not None:
                    row[f"{codec}_minus_none_points"] = 100 * (row[codec] - row["none"])
        summary.append(row)
    return {"key": key, "seeds": args.seeds, "units": units, "tasks": summary}


# -- report --------------------------------------------------------------------------------
def report_of(result: dict[str, Any]) -> Report:
    bt = result["bytes_and_time"]
    report = Report("Compressed updates: bytes per round per direction, time, accuracy cost")
    report.text(
        f"One site's round on the `{bt['preset']}` preset's global weights ({bt['encoder']}, "
        f"encoder and every shared block: {bt['tensors']} tensors, "
        f"{bt['float32_bytes'] / MB:.1f} MB float32). Down: the server's training message; "
        "up: the site's reply; bytes as serialised npy payloads (what report.json counts). "
        "Seconds are medians of "
        f"{result['settings']['repeats']} repeats on this machine (one thread: "
        f"{result['settings']['threads']}). int8 runs send their weights down in bf16. "
        "Relative error: RMS of (the change the server rebuilds - the site's true change) over "
        "the RMS of the change (std 2e-4), one round, before error feedback. MB = 10^6 bytes."
    )
    report.table(
        [
            "codec",
            "down (MB)",
            "up (MB)",
            "down / none",
            "up / none",
            "goal met",
            "server encode (s)",
            "site decode (s)",
            "site encode (s)",
            "server decode (s)",
            "relative error of the change",
        ],
        [
            [
                r["codec"]
                + ("" if r["downlink_codec"] == r["codec"] else f" (down {r['downlink_codec']})"),
                r["bytes_down"] / MB,
                r["bytes_up"] / MB,
                r.get("ratio_down"),
                r.get("ratio_up"),
                "yes" if r.get("goal_met") else "no",
                r["seconds_server_encode"],
                r["seconds_site_decode"],
                r["seconds_site_encode"],
                r["seconds_server_decode"],
                r["relative_error_of_change"],
            ]
            for r in bt["rows"]
        ],
    )
    acc = result.get("accuracy")
    report.heading("Accuracy cost against float32")
    if not acc:
        report.text(
            "Not measured in this run (hours on CPU). Run "
            "`PYTHONPATH=. python3 bench/compression.py --accuracy` (3 seeds, the recipe's "
            "bench/sites tasks; resumable, cached under bench/.work/compression)."
        )
        return report
    codecs = [c for c in result["settings"]["codecs"]]
    report.text(
        f"Test split, primary metric per task, mean over seeds {acc['seeds']}; "
        f"{acc['key']['steps']} steps per task, {acc['key']['local_steps']} local steps, "
        f"preset {acc['key']['preset']}. Goal: within 0.2 points of none for fp16/bf16, 0.5 "
        "for int8."
    )
    report.table(
        ["task", "metric", *codecs, *[f"{c} - none (points)" for c in codecs if c != "none"]],
        [
            [
                r["task"],
                r["metric"],
                *[r.get(c) for c in codecs],
                *[r.get(f"{c}_minus_none_points") for c in codecs if c != "none"],
            ]
            for r in acc["tasks"]
        ],
    )
    return report


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    start = start_run(args)
    fields: dict[str, Any] = {
        "settings": {
            "codecs": args.codecs,
            "repeats": args.repeats,
            "threads": args.threads,
            "quick": args.quick,
        },
        "bytes_and_time": bytes_and_time(args),
    }
    if args.accuracy:
        fields["accuracy"] = accuracy(args)
    return finish_run(args, "compression", fields, report_of, start=start)


if __name__ == "__main__":
    main()
