"""experiments/lever_ablation.py: the paired comparison, and what each variant pretrains on.

Pure functions over rows and site files: no training (the smoke in the module docstring
trains).
"""

from __future__ import annotations

import pytest

from bench.common import site_files
from experiments import leave_one_site_out as loso
from experiments import lever_ablation as ablation
from umedpt.config import load_site_config
from umedpt.data.demo import write_demo_federation


def cells(variant: str, encoder: str, by_seed: dict[int, float], eval_seeds: int = 2):
    """Rows of one target at 10%: ``by_seed[pretraining seed]`` +/- 0.01 over the evaluation
    seeds (mean exactly the value), both modes alike."""
    return [
        {
            "target": "t",
            "variant": variant,
            "encoder": encoder,
            "mode": mode,
            "fraction": 10.0,
            "seed": e,
            "pretrain_seed": p,
            "value": value + (0.01 if e % 2 else -0.01),
        }
        for p, value in by_seed.items()
        for mode in loso.MODES
        for e in range(eval_seeds)
    ]


def test_a_levers_change_is_paired_by_pretraining_seed():
    rows = cells("default", loso.FEDERATED, {0: 0.40, 1: 0.50, 2: 0.45})
    rows += cells("default", loso.RANDOM, {0: 0.42, 1: 0.42, 2: 0.42})
    # seed-to-seed spread (0.40..0.50) far above the lever's steady +0.02
    rows += cells("augment", loso.FEDERATED, {0: 0.42, 1: 0.52, 2: 0.47})
    means = ablation.seed_means(rows, ["t"], ["default", "augment"], eval_seeds=2)
    table = ablation.compare(means, ["t"], ["default", "augment"], [0, 1, 2])
    augment = next(c for c in table if c["variant"] == "augment" and c["mode"] == "frozen")
    assert augment["vs_default"]["mean"] == pytest.approx(0.02)
    assert augment["vs_default"]["sd"] == pytest.approx(0.0, abs=1e-9)
    assert augment["federated"]["sd"] == pytest.approx(0.05)  # unpaired: the seeds' spread
    assert augment["vs_random"]["mean"] == pytest.approx(0.47 - 0.42)
    assert augment["pretrain_seeds"] == [0, 1, 2]


def test_a_seed_without_every_evaluation_seed_is_left_out():
    rows = cells("default", loso.FEDERATED, {0: 0.40, 1: 0.50})
    rows += cells("ssl", loso.FEDERATED, {0: 0.45})
    rows += cells("ssl", loso.FEDERATED, {1: 0.90}, eval_seeds=1)  # seed 1 still running
    means = ablation.seed_means(rows, ["t"], ["default", "ssl"], eval_seeds=2)
    ssl = next(
        c for c in ablation.compare(means, ["t"], ["ssl"], [0, 1]) if c["mode"] == "finetune"
    )
    assert ssl["pretrain_seeds"] == [0]
    assert ssl["vs_default"] == {"mean": pytest.approx(0.05), "sd": None, "n": 1}
    assert ssl["vs_random"]["mean"] is None  # no random cells yet
    missing = ablation.missing_of(means, ["t"], ["default", "ssl"], [0, 1])
    assert "t ssl frozen (pretraining seed 1)" in missing
    assert "t ssl finetune (pretraining seed 1)" in missing
    assert "t random init frozen (pretraining seed 0,1)" in missing
    assert not any(m.startswith("t default") for m in missing)


@pytest.fixture(scope="module")
def demo_sites(tmp_path_factory):
    return write_demo_federation(tmp_path_factory.mktemp("demo"), seed=0)[:4]


def test_the_four_sites_variant_pretrains_on_those_sites_without_the_target(demo_sites):
    assert [f.stem for f in demo_sites] == ["clinic-a", "clinic-b", "clinic-c", "clinic-d"]
    argv = ["--targets", "clinic-c", "--sites", *map(str, demo_sites)]
    args = ablation.parse_args([*argv, "--four-sites", "clinic-a", "clinic-b"])
    four = ablation.variant_args(args, ablation.FOUR_SITES, "clinic-c")
    default = ablation.variant_args(args, ablation.DEFAULT, "clinic-c")
    sites = [load_site_config(f) for f in site_files(four)]
    target = next(s for s in sites if s.name == "clinic-c")
    assert sorted(loso.names(loso.pretraining_sites(target, sites))) == ["clinic-a", "clinic-b"]
    # another pretraining set is another cache; the default shares the main run's
    assert four.work != default.work
    assert default.work == loso.parse_args(["--sites", *map(str, demo_sites)]).work
    # the ablation's budget and seeds do not enter the keys
    assert (four.fractions, four.pretrain_seeds) == ("10", 3)


def test_every_lever_is_its_own_cache_and_an_unknown_four_site_is_refused(demo_sites):
    argv = ["--targets", "clinic-a", "--sites", *map(str, demo_sites)]
    args = ablation.parse_args([*argv, "--four-sites", "clinic-b", "clinic-c"])
    works = {v: ablation.variant_args(args, v, "clinic-a").work for v in ablation.VARIANTS}
    assert len(set(works.values())) == len(ablation.VARIANTS)
    args = ablation.parse_args(argv)  # the default four are the shared sites, not demo ones
    with pytest.raises(SystemExit, match="bccd"):
        ablation.variant_args(args, ablation.FOUR_SITES, "clinic-a")


def test_derived_site_files_are_left_alone_while_unchanged(demo_sites, tmp_path):
    """Sites mid-federation reload their file every message: a second process preparing the
    same variant must not rewrite it under them, only repair a stale one (whole, renamed)."""
    import os

    from bench.levers import Levers, lever_site_files

    levers = Levers(self_supervised=True)
    first = lever_site_files(demo_sites, levers, tmp_path / "sites")
    for f in first:
        os.utime(f, ns=(10**9, 10**9))  # a write would move the time on
    again = lever_site_files(demo_sites, levers, tmp_path / "sites")
    assert again == first and {f.stat().st_mtime_ns for f in again} == {10**9}
    text = first[0].read_text()
    first[0].write_text("stale")
    lever_site_files(demo_sites, levers, tmp_path / "sites")
    assert first[0].read_text() == text
    assert not list((tmp_path / "sites").glob("*.tmp"))


def test_a_levers_row_averages_only_the_seeds_its_default_has():
    """Otherwise its mean and its change from the default describe different seeds: a lever
    with seeds 0-2 against a default with seed 0 would read +14 points where the paired
    change is +2."""
    rows = cells("default", loso.FEDERATED, {0: 0.40})
    rows += cells("augment", loso.FEDERATED, {0: 0.42, 1: 0.60, 2: 0.60})
    means = ablation.seed_means(rows, ["t"], ["default", "augment"], eval_seeds=2)
    table = ablation.compare(means, ["t"], ["default", "augment"], [0, 1, 2])
    augment = next(c for c in table if c["variant"] == "augment" and c["mode"] == "frozen")
    assert augment["pretrain_seeds"] == [0]
    assert augment["federated"]["mean"] == pytest.approx(0.42)
    assert augment["vs_default"]["mean"] == pytest.approx(0.02)
    missing = ablation.missing_of(means, ["t"], ["default", "augment"], [0, 1, 2])
    assert "t default frozen (pretraining seed 1,2)" in missing


def test_the_table_keeps_the_targets_another_process_gathered(demo_sites, monkeypatch):
    """Two processes share the caches and write one file: each lists every target a lever
    variant has cells of, its own --targets first; the default's cache (the leave-one-site-out
    run's, every target) does not make a target ablated."""
    argv = ["--targets", "clinic-b", "--sites", *map(str, demo_sites)]
    args = ablation.parse_args(argv)
    rows = [{"target": "clinic-d", "variant": "augment"}, {"target": "clinic-a", "variant": "x"}]
    rows += [{"target": t, "variant": "default"} for t in ("clinic-a", "clinic-c", "clinic-e")]
    assert ablation.reported_targets(args, rows) == ["clinic-b", "clinic-a", "clinic-d"]
    args = ablation.parse_args([*argv, "--four-sites", "clinic-a", "clinic-b"])
    assert ablation.pretraining_site_count(args, ablation.FOUR_SITES, "clinic-b") == 1
    assert ablation.pretraining_site_count(args, ablation.FOUR_SITES, "clinic-c") == 2
    assert ablation.pretraining_site_count(args, "augment", "clinic-b") == 3


def test_a_cache_pretrained_on_other_derived_tasks_is_refused(demo_sites, tmp_path, monkeypatch):
    """The cache key names the site files and the levers; what bench/levers.py derives from
    them is recorded on first use, machine-independent, and checked after."""
    import bench.levers

    argv = ["--sites", *map(str, demo_sites), "--self-supervised", "--work", str(tmp_path / "w")]
    args = loso.parse_args([*argv, "--pretrain-seeds", "1"])
    loso.prepare(args)
    recorded = (args.work / loso.DERIVED_SITES_FILE).read_text()
    loso.prepare(args)  # unchanged: accepted
    # the same files elsewhere derive the same record (paths do not enter it)
    moved = [tmp_path / "elsewhere" / f.name for f in demo_sites]
    moved[0].parent.mkdir()
    for src, dst in zip(demo_sites, moved):
        dst.write_text(src.read_text())
    levers = bench.levers.levers_of(args)
    assert bench.levers.derived_tasks_key(moved, levers) == bench.levers.derived_tasks_key(
        demo_sites, levers
    )
    monkeypatch.setattr(bench.levers, "SELF_SUPERVISED_SUFFIX", "-unlabelled")
    with pytest.raises(SystemExit, match="other tasks than bench/levers.py derives"):
        loso.prepare(args)
    assert (args.work / loso.DERIVED_SITES_FILE).read_text() == recorded
    # a lever cache that pretrained before the record existed: unknown tasks, refused
    (args.work / loso.DERIVED_SITES_FILE).unlink()
    (args.work / "clinic-a" / loso.FEDERATED).mkdir(parents=True)
    with pytest.raises(SystemExit, match="before the derived tasks were recorded"):
        loso.prepare(args)
