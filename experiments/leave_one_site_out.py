"""Leave-one-site-out transfer: does an encoder pretrained on the other sites save labels on one?

The project's headline result. For each site of ``bench/sites`` (the ``../shared/data``
datasets; ``--sites`` names others) as the target, encoders are pretrained on all the other
sites -- federated (FedAvg, the real ClientApp in process), centralized (``umedpt.pretrain``
on all of them) and each site alone -- with the same number of steps per task, then
``umedpt.evaluation`` (the machinery of ``umedpt-fl evaluate``) trains fresh heads for the
held-out site's task on 1/10/100% of its training labels (frozen and finetune, 3 seeds, plus
the random baseline of the same architecture) and scores its test split once, with the
metric ``umedpt-fl evaluate`` reports for that task type (balanced accuracy for single-label
classification, else the type's primary metric). The held-out data is the site file's own
train / val / test split.

Every pretraining run and every evaluation cell is cached under ``--work`` (default
``experiments/.work/leave-one-site-out/<key of the pretraining settings and the sites>``); a
rerun skips
what is done, so the experiment can be run in pieces and still end as one table. Results go
to ``experiments/results/leave-one-site-out.json`` (``rows``: one ``{target, encoder, mode,
fraction, seed, metric, value}`` per cell; ``summaries``: each target's means; ``meta``: the
settings) beside a ``.md`` rendered from it with labels saved, federated - centralized and
federated - best site-alone per target, and what is still missing.

    PYTHONPATH=. python3 experiments/leave_one_site_out.py     # hours on 2 cores; resumable
    PYTHONPATH=. python3 experiments/leave_one_site_out.py --targets pbc_blood_cells --quick
"""

from __future__ import annotations

from federation.entry import enter_command_process

enter_command_process()  # a process entry: before anything imports Flower

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, add_sites_arg, site_files, sites_key, start_run
from bench.report import Report, write_json, write_results
from bench.simtools import federate_in_process
from experiments.common import WORK_DIR, experiment_parser
from federation.settings import SCHEDULES, RunSettings
from umedpt.checkpoint import read_meta, read_model_config
from umedpt.config import SiteConfig, load_site_config
from umedpt.evaluation import (
    EvalProtocol,
    choose_task,
    load_target,
    parse_encoders,
    run_evaluation,
)
from umedpt.evaluation.summary import summarize
from umedpt.models.presets import model_config
from umedpt.pretrain import PretrainConfig, pretrain

log = logging.getLogger("experiments.leave_one_site_out")

NAME = "leave-one-site-out"
FEDERATED, CENTRALIZED, SITE_ALONE, RANDOM = "federated", "centralized", "site-alone", "random"
DEFAULTS = RunSettings()  # the recipe `simulate` and `server` run by default
DEFAULT_STEPS = 300  # steps per task: the budget experiments/recipe.py measured the recipe at


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = experiment_parser(
        __doc__, preset="tiny", threads=1, quick="2 rounds x 5 steps, 1 seed, 1 and 100%%"
    )
    add_sites_arg(parser)
    parser.add_argument("--targets", nargs="*", default=None, help="site names (default: all)")
    parser.add_argument(
        "--steps", type=int, default=DEFAULT_STEPS, help="pretraining steps per task, every arm"
    )
    # The federation's recipe: the defaults of `simulate` and `server` (RunSettings).
    parser.add_argument("--local-steps", type=int, default=DEFAULTS.local_steps)
    parser.add_argument("--schedule", default=DEFAULTS.schedule, choices=SCHEDULES)
    parser.add_argument(
        "--share-blocks", action=argparse.BooleanOptionalAction, default=DEFAULTS.share_blocks
    )
    parser.add_argument("--fractions", default="1,10,100")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--eval-steps", type=int, default=200, help="most steps of one cell")
    parser.add_argument("--eval-min-steps", type=int, default=100)
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help=f"cache folder (default: experiments/.work/{NAME}/<key of the pretraining settings>)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.local_steps, args.seeds, args.fractions = 10, 5, 1, "1,100"
        args.eval_steps, args.eval_min_steps = 20, 10
    if args.steps % args.local_steps:
        parser.error("--steps must be a multiple of --local-steps (whole rounds)")
    args.rounds = args.steps // args.local_steps
    if args.work is None:  # one folder per pretraining recipe: cached encoders never mix
        key = hashlib.sha256(json.dumps(pretraining_of(args), sort_keys=True).encode())
        args.work = WORK_DIR / NAME / key.hexdigest()[:10]
    return args


def pretraining_of(args: argparse.Namespace) -> dict[str, Any]:
    """Everything the cached encoders depend on, the sites included: an encoder pretrained
    on the other three of four sites is not one pretrained on the other five of six."""
    keys = ("preset", "seed", "steps", "local_steps", "schedule", "share_blocks", "quick")
    settings = {k: getattr(args, k) for k in keys}
    settings["sites"] = sites_key(site_files(args))
    return settings


def encoder_folders(cache: Path, target: str, others: Sequence[str]) -> dict[str, Path]:
    """Where each arm's encoder for ``target`` lives in a cache (``--work``), by label. A site
    alone trains the same run whichever site is held out: one folder per site, beside the
    targets'."""
    return {
        FEDERATED: cache / target / FEDERATED / "global",
        CENTRALIZED: cache / target / CENTRALIZED / "checkpoint",
        **{f"{SITE_ALONE}:{s}": cache / f"{SITE_ALONE}-{s}" / "checkpoint" for s in others},
    }


def check_targets(names: Sequence[str] | None, sites: Sequence[str]) -> list[str]:
    """``names`` (default: every site), or exit naming the ones that are not sites."""
    unknown = sorted(set(names or []) - set(sites))
    if unknown:
        raise SystemExit(f"--targets {unknown}: not among the sites {sorted(sites)}")
    return list(names or sites)


def pretrain_encoders(target: SiteConfig, others: list[SiteConfig], args, work: Path) -> list[str]:
    """Pretrain (or find cached) every encoder for ``target``; ``LABEL=DIR`` specs."""
    folders = encoder_folders(work.parent, target.name, [s.name for s in others])
    specs = []
    fed = folders[FEDERATED].parent
    if (fed / "global" / "checkpoint.json").is_file():
        check_budget(fed / "global", args)
    else:
        shutil.rmtree(fed, ignore_errors=True)  # what a killed run left: start afresh
        log.info("%s: federated pretraining on %s", target.name, [s.name for s in others])
        report = federate_in_process(
            [s.file for s in others],
            fed,
            num_server_rounds=args.rounds,
            local_steps=args.local_steps,
            eval_every=args.rounds,
            preset=args.preset,
            seed=args.seed,
            schedule=args.schedule,
            share_blocks=args.share_blocks,
            tracking="none",
        )
        if report["status"] != "completed":
            raise RuntimeError(f"{target.name}: the federated pretraining failed: {report}")
    specs.append(f"{FEDERATED}={folders[FEDERATED]}")
    arms = [(CENTRALIZED, others)] + [(f"{SITE_ALONE}:{s.name}", [s]) for s in others]
    for label, sites in arms:
        folder = folders[label].parent
        with exclusive(folder):  # a site alone is shared by every target (and process)
            pretrain_arm(target, label, sites, folder, args)
        specs.append(f"{label}={folders[label]}")
    return specs


@contextlib.contextmanager
def exclusive(folder: Path) -> Iterator[None]:
    """Hold ``<folder>.lock`` while working on ``folder``: several processes may run this
    experiment on one cache (``--targets`` in different orders) without doing a unit twice."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def pretrain_arm(target: SiteConfig, label: str, sites, folder: Path, args) -> None:
    """One centralized or site-alone encoder, unless it is cached."""
    if (folder / "done.json").is_file():
        check_budget(folder, args)
        return
    steps = args.rounds * args.local_steps
    log.info("%s: %s pretraining on %s", target.name, label, [s.name for s in sites])
    start = time.perf_counter()
    config = PretrainConfig(
        preset=args.preset,
        steps=steps,
        eval_every=steps,
        seed=args.seed,
        device="cpu",
        schedule=args.schedule,
    )
    result = pretrain(sites, config, folder)
    write_json(
        folder / "done.json",
        {"steps": steps, "seconds": time.perf_counter() - start, "val": result.final_metrics},
    )


def check_budget(folder: Path, args: argparse.Namespace) -> None:
    """A cached encoder must come from this run's budget and preset."""
    steps = args.rounds * args.local_steps
    if (folder / "done.json").is_file():  # a pretrain arm
        found = json.loads((folder / "done.json").read_text())["steps"]
        checkpoint = folder / "checkpoint"
    else:  # the federated arm's global/
        settings = read_meta(folder)["settings"]
        found = settings["num-server-rounds"] * settings["local-steps"]
        checkpoint = folder
    architecture = read_model_config(checkpoint).to_dict()
    if found != steps or architecture != model_config(args.preset).to_dict():
        raise SystemExit(
            f"{folder}: cached from another budget ({found} steps per task, now {steps}) or "
            f"preset (now {args.preset}); use another --work"
        )


def evaluate_target(target: SiteConfig, specs: list[str], args, work: Path) -> dict[str, Any]:
    protocol = EvalProtocol(
        fractions=tuple(float(f) for f in args.fractions.split(",")),
        seeds=args.seeds,
        max_steps=args.eval_steps,
        min_steps=args.eval_min_steps,
    )
    loaded = load_target(choose_task(target, None))  # as `umedpt-fl evaluate --target`
    encoders = parse_encoders(specs, preset=args.preset)

    def progress(done: int, total: int, result: Any) -> None:
        if result is not None:
            log.info(
                "%s: cell %d/%d (%s %s %g%% seed %d, %.0f s)",
                target.name,
                done,
                total,
                result.encoder,
                result.mode,
                result.fraction,
                result.seed,
                result.seconds,
            )

    return run_evaluation(loaded, encoders, protocol, work / "eval", device="cpu", on_cell=progress)


def rows_of(target: str, results: dict[str, Any]) -> list[dict[str, Any]]:
    metric = results["metric"]
    return [
        {
            "target": target,
            "encoder": cell["encoder"],
            "mode": cell["mode"],
            "fraction": cell["fraction"],
            "seed": cell["seed"],
            "metric": metric,
            "value": cell["metrics"].get(metric),
        }
        for cell in results["cells"]
    ]


def collect(work: Path, targets: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every finished cell of every target (from the cached results), and each summary."""
    rows, summaries = [], {}
    for name in targets:
        path = work / name / "eval" / "results.json"
        if path.is_file():
            results = json.loads(path.read_text())
            rows += rows_of(name, results)
            summaries[name] = summarize(results)
    return rows, summaries


def report_of(result: dict[str, Any]) -> Report:
    """Per target: each arm's mean ± sd per fraction, the federated encoder's lead over the
    centralized and the best site-alone one, and the labels saved."""
    meta, summaries = result["meta"], result["summaries"]
    recipe = (
        f"{meta['schedule']} learning-rate schedule over those steps in every arm, blocks "
        f"{'shared' if meta['share_blocks'] else 'kept at each site'} in the federation, "
        if "schedule" in meta  # not recorded by the first run (leave-one-site-out-150-steps)
        else ""
    )
    report = Report("Leave-one-site-out transfer (tiny preset, 64 px, CPU)").text(
        f"Pretraining: {meta['rounds']} rounds x {meta['local_steps']} local steps "
        f"(= {meta['rounds'] * meta['local_steps']} steps per task in every arm), "
        f"{recipe}seed {meta['seed']}. Evaluation: fractions {meta['fractions']} %, "
        f"{meta['seeds']} seeds, {meta['eval_min_steps']}..{meta['eval_steps']} steps per cell, "
        f"frozen and finetune (protocol in docs/evaluation.md). Rows: `{result['name']}.json`.",
        (
            f"Sites: {', '.join(meta['sites'])}; each target's encoders are pretrained on all the "
            "others. "
            if "sites" in meta
            else ""
        )
        + f"Targets finished: {meta['finished']}; missing: {meta['missing'] or 'none'}. "
        f"Wall time of the last invocation: {meta['seconds'] / 60:.0f} min.",
    )
    for target, summary in summaries.items():
        metric = summary["primary_metric"]
        report.heading(f"target {target} ({metric})")
        means = {(r["encoder"], r["mode"], r["fraction"]): r for r in summary["rows"]}
        fractions = sorted({r["fraction"] for r in summary["rows"]})
        table = []
        for encoder, mode in dict.fromkeys((r["encoder"], r["mode"]) for r in summary["rows"]):
            table.append(
                [
                    encoder,
                    mode,
                    *[
                        f"{m['mean']:.3f} ± {m['sd']:.3f}"
                        if (m := means.get((encoder, mode, f)))
                        else "-"
                        for f in fractions
                    ],
                ]
            )
        report.table(["encoder", "mode", *[f"{f:g}%" for f in fractions]], table)
        diffs = []
        for mode in dict.fromkeys(r["mode"] for r in summary["rows"]):
            for f in fractions:
                fed = means.get((FEDERATED, mode, f))
                cen = means.get((CENTRALIZED, mode, f))
                alone = [
                    m
                    for (e, md, fr), m in means.items()
                    if e.startswith(SITE_ALONE) and md == mode and fr == f
                ]
                best = max(alone, key=lambda m: m["mean"]) if alone else None
                diffs.append(
                    [
                        mode,
                        f"{f:g}%",
                        f"{fed['mean'] - cen['mean']:+.3f}" if fed and cen else "-",
                        f"{fed['mean'] - best['mean']:+.3f} ({best['encoder']})"
                        if fed and best
                        else "-",
                    ]
                )
        report.table(
            ["mode", "fraction", "federated - centralized", "federated - best site-alone"], diffs
        )
        saved = [
            [
                e["encoder"],
                e["mode"],
                "no baseline yet"
                if e["baseline_mean"] is None
                else "not reached"
                if e["fraction"] is None
                else f"{e['fraction']:g}%",
                "-" if e["fraction"] is None else f"{100 - e['fraction']:g}%",
            ]
            for e in summary["labels_saved"]
        ]
        report.text("Labels saved (reaches the random baseline's mean at 100%):")
        report.table(["encoder", "mode", "reaches it at", "labels saved"], saved)
    return report


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    start = start_run(args)
    sites = [load_site_config(f) for f in site_files(args)]
    by_name = {s.name: s for s in sites}
    targets = [by_name[n] for n in check_targets(args.targets, list(by_name))]  # in the order given
    args.work.mkdir(parents=True, exist_ok=True)
    saved = args.work / "settings.json"
    if not saved.is_file():  # written whole, then renamed: another process may be reading
        write_json(saved, pretraining_of(args))
    if json.loads(saved.read_text()) != pretraining_of(args):
        raise SystemExit(f"{args.work}: caches encoders of other settings ({saved}); use another")
    for target in targets:
        others = [s for s in sites if s.name != target.name]
        work = args.work / target.name
        work.mkdir(parents=True, exist_ok=True)
        with exclusive(work):  # one process per target at a time
            specs = pretrain_encoders(target, others, args, work)
            evaluate_target(target, specs, args, work)
        write_outputs(args, sites, start)
    write_outputs(args, sites, start)


def write_outputs(args: argparse.Namespace, sites: list[SiteConfig], start: float) -> None:
    names = [s.name for s in sites]
    rows, summaries = collect(args.work, names)
    # federated, centralized, each other site alone, random; x 2 modes x fractions x seeds
    expected_per_target = (len(sites) + 2) * 2 * len(args.fractions.split(",")) * args.seeds
    finished = [n for n in names if sum(r["target"] == n for r in rows) >= expected_per_target]
    meta = {
        "sites": names,
        "rounds": args.rounds,
        "local_steps": args.local_steps,
        "schedule": args.schedule,
        "share_blocks": args.share_blocks,
        "work": str(args.work.relative_to(REPO_ROOT))
        if args.work.is_relative_to(REPO_ROOT)
        else "",
        "seed": args.seed,
        "fractions": args.fractions,
        "seeds": args.seeds,
        "eval_steps": args.eval_steps,
        "eval_min_steps": args.eval_min_steps,
        "finished": finished,
        "missing": [n for n in names if n not in finished],
        "seconds": time.perf_counter() - start,
    }
    # The summaries without their site file's path (this machine's): the tables' numbers.
    summaries = {
        t: {k: v for k, v in summary.items() if k != "target_file"}
        for t, summary in summaries.items()
    }
    result = {"name": NAME, "meta": meta, "summaries": summaries, "rows": rows}
    write_results(args.out, NAME, result, report_of(result))
    log.info("wrote %d rows; finished %s, missing %s", len(rows), finished, meta["missing"])


if __name__ == "__main__":
    main()
