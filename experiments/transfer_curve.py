"""Transfer over pretraining budget: where does joining the federation start to pay off?

Issue 10's transfer goal (leave-one-site-out, 10% of the held-out site's labels): the
federated encoder within 1 point of the centralized one and above every site-alone encoder,
frozen and finetune. Where one budget does not show it, this experiment shows the curve:
``experiments/leave_one_site_out.py`` at several pretraining budgets (steps per task, the
same in every arm) and pretraining seeds, one cache per (budget, seed), gathered into one
table.

It runs what is missing (``--run``; resumable, two processes may share the caches) or only
gathers what the caches hold, and writes ``experiments/results/transfer-vs-budget.{json,md,png}``:
per target, mode and budget the mean of each arm (over evaluation seeds, and over pretraining
seeds where there are several), federated - centralized, federated - best site-alone, the
random-init baseline, and whether the goal holds.

    PYTHONPATH=. python3 experiments/transfer_curve.py                    # gather 150,300,600
    PYTHONPATH=. python3 experiments/transfer_curve.py --run --steps 150  # train what is missing
    PYTHONPATH=. python3 experiments/transfer_curve.py --quick --out /tmp/x  # the --quick caches
"""

from __future__ import annotations

from federation.entry import enter_command_process

enter_command_process()  # a process entry: before anything imports Flower

import argparse
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import add_sites_arg, site_files, start_run
from bench.report import Report, write_results
from experiments import leave_one_site_out as loso
from experiments.common import add_eval_class_weighting_arg, experiment_parser
from umedpt.config import load_site_config

NAME = "transfer-vs-budget"
TOLERANCE = 0.01  # "within 1 point" of centralized
PANEL_COLUMNS = 3  # targets side by side in the plot; more wrap onto further rows


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = experiment_parser(
        __doc__,
        name=NAME,
        quick="smoke: the caches of leave_one_site_out.py --quick (10 steps/task, 1 seed), 100%%",
    )
    parser.add_argument("--steps", default="150,300,600", help="pretraining steps per task")
    parser.add_argument("--pretrain-seeds", default="0", help="pretraining seeds per budget")
    parser.add_argument("--fraction", type=float, default=10.0, help="%% of the target's labels")
    parser.add_argument("--targets", nargs="*", default=None, help="site names (default: all)")
    add_sites_arg(parser)
    add_eval_class_weighting_arg(parser)
    parser.add_argument("--run", action="store_true", help="train and evaluate what is missing")
    args = parser.parse_args(argv)
    if args.quick:  # the one budget and a fraction leave_one_site_out.py --quick has
        args.steps, args.pretrain_seeds, args.fraction = "10", "0", 100.0
    try:
        args.budgets = [int(s) for s in args.steps.split(",")]
        args.seeds_pretrain = [int(s) for s in args.pretrain_seeds.split(",")]
    except ValueError:
        parser.error(
            f"--steps {args.steps!r} / --pretrain-seeds {args.pretrain_seeds!r}: "
            "comma-separated whole numbers, e.g. 150,300,600"
        )
    return args


def loso_argv(budget: int, seed: int, args: argparse.Namespace) -> list[str]:
    """The leave-one-site-out invocation of one point of the curve (default recipe)."""
    argv = ["--steps", str(budget), "--seed", str(seed), "--fractions", f"{args.fraction:g}"]
    argv += ["--pretrain-seeds", "1"]  # this curve names its pretraining seeds itself
    argv += ["--labels-fractions", ""]  # one budget of labels per point: no labels curve
    argv += ["--eval-class-weighting", args.eval_class_weighting]
    if args.sites:
        argv += ["--sites", *map(str, site_files(args))]
    if args.quick:
        argv.append("--quick")
    if args.targets:
        argv += ["--targets", *args.targets]
    return argv


def gather(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[str]]:
    """Per (target, budget, mode, encoder): the mean over pretraining seeds of each seed's
    mean over evaluation seeds; and the (budget, seed, target) points not yet in the caches."""
    per_seed: dict[tuple, list[float]] = defaultdict(list)
    sds: dict[tuple, list[float]] = defaultdict(list)
    missing, metrics = [], {}
    sites = [load_site_config(f).name for f in site_files(args)]
    names = loso.check_targets(args.targets, sites)
    for budget in args.budgets:
        for seed in args.seeds_pretrain:
            point = loso.parse_args(loso_argv(budget, seed, args))
            _, summaries = loso.collect(point.work, names, seed, args.eval_class_weighting)
            for name in names:
                rows = [
                    r
                    for r in summaries.get(name, {}).get("rows", [])
                    if r["fraction"] == args.fraction
                ]
                # every arm (federated, centralized, each other site, random) x 2 modes, with
                # all its evaluation seeds: a target still being evaluated is not a point yet
                complete = len(rows) == (len(sites) + 2) * 2 and all(
                    r["n"] == point.seeds for r in rows
                )
                if not complete:
                    state = "partial" if rows else "not run"
                    missing.append(f"{name} at {budget} steps, pretraining seed {seed} ({state})")
                    continue
                metrics[name] = summaries[name]["primary_metric"]
                for r in rows:
                    key = (name, budget, r["mode"], r["encoder"])
                    per_seed[key].append(r["mean"])
                    sds[key].append(r["sd"])
    rows = [
        {
            "target": name,
            "metric": metrics[name],
            "budget": budget,
            "mode": mode,
            "encoder": encoder,
            "mean": statistics.fmean(values),
            # one pretraining seed: the spread over evaluation seeds; several: over their means
            # (the random baseline does not depend on the pretraining seed)
            "sd": statistics.stdev(values)
            if len(values) > 1 and encoder != loso.RANDOM
            else statistics.fmean(sds[key]),
            "pretraining_seeds": len(values),
        }
        for key, values in per_seed.items()
        for name, budget, mode, encoder in [key]
    ]
    return rows, missing


def verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 10's goal per (target, budget, mode)."""
    cells: dict[tuple, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        cells[(r["target"], r["budget"], r["mode"])][r["encoder"]] = r
    out = []
    for (target, budget, mode), arms in sorted(cells.items()):
        fed, cen, rnd = arms.get(loso.FEDERATED), arms.get(loso.CENTRALIZED), arms.get(loso.RANDOM)
        alone = [r for e, r in arms.items() if e.startswith(loso.SITE_ALONE)]
        if not (fed and cen and alone):
            continue
        best = max(alone, key=lambda r: r["mean"])
        vs_cen, vs_alone = fed["mean"] - cen["mean"], fed["mean"] - best["mean"]
        out.append(
            {
                "target": target,
                "budget": budget,
                "mode": mode,
                "federated": fed["mean"],
                "centralized": cen["mean"],
                "best_site_alone": best["mean"],
                "best_site_alone_encoder": best["encoder"],
                "random": rnd["mean"] if rnd else None,
                "federated_minus_centralized": vs_cen,
                "federated_minus_best_site_alone": vs_alone,
                "federated_minus_random": fed["mean"] - rnd["mean"] if rnd else None,
                "holds": vs_cen >= -TOLERANCE and vs_alone > 0,
            }
        )
    return out


def report_of(result: dict[str, Any]) -> Report:
    rows, judged, missing = result["arms"], result["goal"], result["missing"]
    metric = {r["target"]: r["metric"] for r in rows}
    seconds = result.get("seconds")  # only when this invocation trained (--run)
    report = Report(
        "Transfer over pretraining budget (leave-one-site-out, tiny preset, 64 px, CPU)"
    ).text(
        f"Held-out site's labels: {result['fraction']:g}%. Budgets: {result['budgets']} steps "
        "per task in every arm, with the default recipe "
        "(`experiments/leave_one_site_out.py --steps N`); "
        f"pretraining seeds {result['pretraining_seeds']}; 3 evaluation seeds each. Goal "
        "(issue 10): federated >= centralized - 0.01 and > every site-alone encoder. Each cell "
        "is the mean ± sd over evaluation seeds, or over the means of n pretraining seeds where "
        "it says [n].",
        (f"Sites: {', '.join(result['sites'])}. " if "sites" in result else "")
        + f"Missing points: {missing or 'none'}."
        + (f" This invocation ran for {seconds / 60:.0f} min." if seconds is not None else ""),
    )
    arms = {(r["target"], r["budget"], r["mode"], r["encoder"]): r for r in rows}
    for target in sorted(metric):
        table = []
        for v in [j for j in judged if j["target"] == target]:
            key = (target, v["budget"], v["mode"])

            def cell(encoder: str, key=key) -> str:
                r = arms.get((*key, encoder))
                if r is None:
                    return "-"
                seeds = f" [{r['pretraining_seeds']}]" if r["pretraining_seeds"] > 1 else ""
                return f"{r['mean']:.3f} ± {r['sd']:.3f}{seeds}"

            table.append(
                [
                    v["mode"],
                    str(v["budget"]),
                    cell(loso.FEDERATED),
                    cell(loso.CENTRALIZED),
                    f"{cell(v['best_site_alone_encoder'])} "
                    f"({v['best_site_alone_encoder'].split(':')[-1]})",
                    cell(loso.RANDOM),
                    f"{100 * v['federated_minus_centralized']:+.1f}",
                    f"{100 * v['federated_minus_best_site_alone']:+.1f}",
                    "yes" if v["holds"] else "no",
                ]
            )
        table.sort(key=lambda row: (row[0] != "frozen", int(row[1])))
        header = ["mode", "steps/task", "federated", "centralized", "best site-alone"]
        header += ["random init", "fed - cen (pt)", "fed - best alone (pt)", "goal"]
        report.heading(f"{target} ({metric[target]})").table(header, table)
    summary = []
    for (target, mode), group in _by(judged, "target", "mode").items():
        held = sorted(v["budget"] for v in group if v["holds"])
        budgets = sorted(v["budget"] for v in group)
        onward = [b for b in held if all(v["holds"] for v in group if v["budget"] >= b)]
        summary.append(
            [
                target,
                mode,
                f"from {onward[0]} steps/task on"
                if onward
                else f"at {', '.join(map(str, held))} only"
                if held
                else "not at any budget measured",
                ", ".join(map(str, budgets)),
            ]
        )
    report.heading("Where the goal holds")
    return report.table(["target", "mode", "goal holds", "budgets measured"], summary)


def _by(items: list[dict[str, Any]], *keys: str) -> dict[tuple, list[dict[str, Any]]]:
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for item in items:
        groups[tuple(item[k] for k in keys)].append(item)
    return dict(sorted(groups.items()))


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """One panel per target and mode: each arm's metric over the budget; a target's frozen
    panel above its finetune one, ``PANEL_COLUMNS`` targets per row (six would be too wide)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _by(rows, "target", "mode")
    if not panels:
        return
    targets = sorted({t for t, _ in panels})
    columns = min(len(targets), PANEL_COLUMNS)
    grid_rows = 2 * -(-len(targets) // columns)  # two (frozen, finetune) per row of targets
    fig, axes = plt.subplots(
        grid_rows, columns, figsize=(4 * columns, 3.5 * grid_rows), squeeze=False
    )
    used = set()
    for index, target in enumerate(targets):
        for offset, mode in enumerate(("frozen", "finetune")):
            ax = axes[2 * (index // columns) + offset][index % columns]
            used.add(ax)
            for encoder, line in _by(panels.get((target, mode), []), "encoder").items():
                line.sort(key=lambda r: r["budget"])
                style = "--" if encoder[0].startswith(loso.SITE_ALONE) else "-"
                ax.errorbar(
                    [r["budget"] for r in line],
                    [r["mean"] for r in line],
                    yerr=[r["sd"] for r in line],
                    label=encoder[0].replace(f"{loso.SITE_ALONE}:", "alone:"),
                    linestyle=style,
                    marker="o",
                    capsize=3,
                )
            ax.set_title(f"{target}, {mode}")
            ax.set_xlabel("pretraining steps per task")
            ax.set_ylabel(next(r["metric"] for r in rows if r["target"] == target))
            ax.legend(fontsize=7)
    for ax in axes.flat:  # the empty places of a last, incomplete row of targets
        ax.set_visible(ax in used)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    start = start_run(args)
    if args.run:
        for budget in args.budgets:
            for seed in args.seeds_pretrain:
                point = loso.parse_args(loso_argv(budget, seed, args))
                loso.main([*loso_argv(budget, seed, args), "--out", str(point.work / "results")])
    rows, missing = gather(args)
    judged = verdicts(rows)
    result: dict[str, Any] = {
        "sites": [load_site_config(f).name for f in site_files(args)],
        "fraction": args.fraction,
        "budgets": args.budgets,
        "pretraining_seeds": args.seeds_pretrain,
        "tolerance": TOLERANCE,
        "missing": missing,
        "arms": rows,
        "goal": judged,
    }
    if args.run:
        result["seconds"] = time.perf_counter() - start
    result["comment"] = args.comment
    write_results(args.out, args.name, result, report_of(result))
    plot(rows, args.out / f"{args.name}.png")


if __name__ == "__main__":
    main()
