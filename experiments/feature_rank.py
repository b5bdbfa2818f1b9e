"""Why a pretrained encoder can transfer worse than a random one: rank and separability per stage.

On the leave-one-site-out experiment a random-init encoder is often the best frozen encoder
(PBC at 10% labels). This diagnostic looks inside the cached encoders of
``experiments/leave_one_site_out.py``: for each held-out target and pretraining budget it mean-pools
each pyramid stage's features of the target's training images and reports

- the effective rank (Roy & Vetterli 2007: exp of the entropy of the normalised singular
  values of the centred features): how many directions the stage still spreads the new
  images over. Supervised pretraining on few tasks collapses the deep stages towards the few
  directions those tasks need;
- for single-label classification targets, the balanced accuracy of a closed-form ridge probe
  (standardised features, one-vs-rest least squares) on the test split, trained on all the
  training labels and on the experiment's 10% subsets (the same class-stratified subsets as
  ``umedpt.evaluation``, 3 seeds). A closed form has no step budget or learning rate, so it
  separates what the features hold from how a probe is trained.

Results: ``experiments/results/feature-rank.{json,md}``.

    PYTHONPATH=. python3 experiments/feature_rank.py           # 300 and 600 steps/task caches
    PYTHONPATH=. python3 experiments/feature_rank.py --steps 300 --targets pbc_blood_cells
    PYTHONPATH=. python3 experiments/feature_rank.py --quick --out /tmp/x  # the --quick caches
"""

from __future__ import annotations

from federation.entry import enter_command_process

enter_command_process()  # a process entry: before anything imports Flower

import argparse
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torchmetrics.functional.classification import multiclass_accuracy

from bench.common import add_sites_arg, site_files, start_run
from bench.report import Report, write_results
from experiments import leave_one_site_out as loso
from experiments.common import experiment_parser
from umedpt.config import SiteConfig, load_site_config
from umedpt.evaluation import choose_task, load_target, parse_encoders
from umedpt.evaluation.subsets import stratified_subset
from umedpt.tasks import get_task_type

NAME = "feature-rank"
RIDGE = 1.0  # penalty per sqrt(sample): mild, the same for every encoder


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = experiment_parser(
        __doc__,
        name=NAME,
        threads=1,
        quick="smoke: the encoders of leave_one_site_out.py --quick (10 steps/task), 1 subset",
    )
    parser.add_argument("--steps", default="300,600", help="pretraining budgets (cached)")
    parser.add_argument("--targets", nargs="*", default=None, help="site names (default: all)")
    add_sites_arg(parser)
    parser.add_argument("--fraction", type=float, default=10.0, help="%% of labels of the probe")
    parser.add_argument("--seeds", type=int, default=3, help="subsets at --fraction")
    args = parser.parse_args(argv)
    if args.quick:  # the one budget leave_one_site_out.py --quick trains
        args.steps, args.seeds = "10", 1
    return args


def pooled_stages(
    encoder: torch.nn.Module, samples, collate, batch: int = 64
) -> list[torch.Tensor]:
    """Each pyramid stage's mean-pooled features of ``samples``: one (N, C_stage) per stage."""
    encoder.eval()
    chunks = []
    with torch.no_grad():
        for start in range(0, len(samples), batch):
            images = collate(samples[start : start + batch]).images
            chunks.append([f.float().mean(dim=(2, 3)) for f in encoder(images)])
    return [torch.cat(stage) for stage in zip(*chunks)]


def effective_rank(features: torch.Tensor) -> float:
    singular = torch.linalg.svdvals(features - features.mean(0))
    p = singular / singular.sum()
    return float(torch.exp(-(p * p.clamp_min(1e-12).log()).sum()))


def ridge_balanced_accuracy(
    train: torch.Tensor,
    y_train: torch.Tensor,
    test: torch.Tensor,
    y_test: torch.Tensor,
    classes: int,
) -> float:
    mean, sd = train.mean(0), train.std(0) + 1e-6
    design = torch.nn.functional.pad((train - mean) / sd, (0, 1), value=1.0)
    targets = torch.nn.functional.one_hot(y_train, classes).float() * 2 - 1
    penalty = RIDGE * len(train) ** 0.5 * torch.eye(design.shape[1])
    weights = torch.linalg.solve(design.T @ design + penalty, design.T @ targets)
    scores = torch.nn.functional.pad((test - mean) / sd, (0, 1), value=1.0) @ weights
    return float(multiclass_accuracy(scores, y_test, num_classes=classes, average="macro"))


def encoder_specs(cache: Path, target: str, sites: Sequence[str]) -> list[str]:
    """The random baseline and every cached arm of ``target``, as ``--encoder`` specs."""
    others = [s for s in sites if s != target]
    folders = loso.encoder_folders(cache, target, others)
    return [loso.RANDOM, *[f"{label}={folder}" for label, folder in folders.items()]]


def measure(
    target: SiteConfig, sites: Sequence[str], budget: int, args: argparse.Namespace
) -> list[dict[str, Any]]:
    argv = ["--steps", str(budget), "--seed", str(args.seed)]
    if args.sites:  # the leave-one-site-out caches of these sites
        argv += ["--sites", *map(str, site_files(args))]
    if args.quick:
        argv.append("--quick")
    work = loso.parse_args(argv).work
    specs = encoder_specs(work, target.name, sites)
    if not all(Path(spec.split("=", 1)[1]).is_dir() for spec in specs[1:]):
        return []  # this budget's encoders for the target are not all trained yet
    task = choose_task(target, None)  # the task leave_one_site_out evaluated
    loaded = load_target(task)
    task_type = get_task_type(task.type)
    collate = task_type.collate
    train, test = loaded.splits["train"], loaded.splits["test"]
    labelled = task.type == "classification"  # single-label: the ridge probe's classes
    rows = []
    for spec in parse_encoders(specs, preset="tiny"):
        encoder = spec.build("cpu")
        stages = pooled_stages(encoder, train, collate)
        row: dict[str, Any] = {
            "target": target.name,
            "budget": budget,
            "encoder": spec.label,
            "effective_rank": [effective_rank(s) for s in stages],
        }
        if labelled:
            y_train = torch.tensor([s.targets["label"] for s in train])
            y_test = torch.tensor([s.targets["label"] for s in test])
            classes = len(task.classes)
            x_train = torch.cat(stages, 1)
            x_test = torch.cat(pooled_stages(encoder, test, collate), 1)
            row["ridge_all_labels"] = ridge_balanced_accuracy(
                x_train, y_train, x_test, y_test, classes
            )
            subsets = [
                torch.tensor(
                    stratified_subset(train, args.fraction, seed, stratum=task_type.stratum)
                )
                for seed in range(args.seeds)
            ]
            row["ridge_fraction"] = statistics.fmean(
                ridge_balanced_accuracy(x_train[i], y_train[i], x_test, y_test, classes)
                for i in subsets
            )
        rows.append(row)
    return rows


def report_of(result: dict[str, Any]) -> Report:
    rows, s = result["rows"], result["settings"]
    report = Report("Feature rank and linear separability of the leave-one-site-out encoders")
    report.text(
        "Per held-out target and pretraining budget (steps per task, default recipe, pretraining "
        f"seed {s['seed']}): the effective rank of each stage's mean-pooled features of the "
        "target's training images (stage 1 -> 4), and for classification targets the test "
        "balanced accuracy of a closed-form ridge probe on all four stages, with all training "
        f"labels and with {s['fraction']:g}% ({s['seeds']} class-stratified subsets, mean). "
        "Written by `experiments/feature_rank.py`."
    )
    for target in dict.fromkeys(r["target"] for r in rows):
        mine = [r for r in rows if r["target"] == target]
        labelled = "ridge_all_labels" in mine[0]
        header = ["steps/task", "encoder", "effective rank, stages 1-4"]
        if labelled:
            header += ["ridge, all labels", f"ridge, {s['fraction']:g}%"]
        table = []
        for r in mine:
            line = [
                str(r["budget"]),
                r["encoder"],
                " / ".join(f"{v:.0f}" for v in r["effective_rank"]),
            ]
            if labelled:
                line += [f"{r['ridge_all_labels']:.3f}", f"{r['ridge_fraction']:.3f}"]
            table.append(line)
        report.heading(target).table(header, table)
    return report


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    start_run(args)
    by_name = {site.name: site for site in map(load_site_config, site_files(args))}
    targets = loso.check_targets(args.targets, list(by_name))
    rows = [
        row
        for target in targets
        for budget in (int(s) for s in args.steps.split(","))
        for row in measure(by_name[target], list(by_name), budget, args)
    ]
    result = {
        "settings": {
            "steps": args.steps,
            "seed": args.seed,
            "fraction": args.fraction,
            "seeds": args.seeds,
        },
        "rows": rows,
        "comment": args.comment,
    }
    write_results(args.out, args.name, result, report_of(result))


if __name__ == "__main__":
    main()
