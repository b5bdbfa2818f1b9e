"""Where the experiments write: results beside the scripts, caches in a git-ignored folder.

Everything else they share with the benchmarks (flags, machine facts, the result writer,
the in-process federation) comes from ``bench`` (``bench.common``, ``bench.report``,
``bench.simtools``); the site files of the ``../shared/data`` datasets are ``bench/sites``
(every script takes all of them unless ``--sites`` names others), which
``bench/site_cache.py`` loads too.
"""

from __future__ import annotations

import argparse
from typing import Any

from bench.common import REPO_ROOT, bench_parser

RESULTS_DIR = REPO_ROOT / "experiments" / "results"
WORK_DIR = REPO_ROOT / "experiments" / ".work"  # caches of pretrained encoders and runs


def experiment_parser(doc: str | None, **kwargs: Any) -> argparse.ArgumentParser:
    """``bench.common.bench_parser`` writing to ``experiments/results`` by default."""
    return bench_parser(doc, out=RESULTS_DIR, **kwargs)


def add_eval_class_weighting_arg(parser: argparse.ArgumentParser, default: str = "none") -> None:
    """``--eval-class-weighting``: how a leave-one-site-out classification target's evaluation
    heads weigh classes, every arm alike (its cells are cached apart: ``eval-<weighting>/``)."""
    parser.add_argument(
        "--eval-class-weighting",
        default=default,
        choices=("none", "balanced"),
        help="class weights of a classification target's evaluation heads, every arm alike "
        "(balanced: trained for the balanced accuracy they are scored by; the six-site run's)",
    )
