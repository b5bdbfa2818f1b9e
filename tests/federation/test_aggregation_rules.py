"""The reduce_group hook and the robust rules on it: median, trimmed mean (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from strategies import weighted_mean
from strategies.aggregation import reduce_by_group
from tests.federation.fakes import GLOBAL, SITES, ScriptedGrid, initial, make

FIVE_SITES = {n: (f"s{n}", ("segmentation",), 10) for n in (1, 2, 3, 4, 5)}


def one_round(name: str, sites, value=None, **settings):
    strategy = make(name, **settings)
    result = strategy.start(ScriptedGrid(sites, value=value), initial(), num_rounds=1, timeout=5)
    return strategy, {k: v.numpy() for k, v in result.arrays.items()}


def parts(*values: float) -> list[dict[str, np.ndarray]]:
    return [{"w": np.full(3, v, np.float32)} for v in values]


# -- the hook on hand-made arrays ----------------------------------------------------------
def test_median_of_1_2_100_is_2_per_coordinate() -> None:
    reduced = make("fedmedian").reduce_group("encoder", parts(1, 2, 100), [1.0, 1.0, 1.0])
    assert np.array_equal(reduced["w"], np.full(3, 2.0))


def test_trimmed_mean_cuts_beta_at_each_end() -> None:
    rule = make("fedtrimmedavg", trim_beta=0.2)
    assert rule.beta == 0.2
    # five values, int(0.2 * 5) = 1 cut at each end: mean of 2, 3, 4
    reduced = rule.reduce_group("encoder", parts(1, 2, 3, 4, 1000), [1.0] * 5)
    assert np.allclose(reduced["w"], 3.0)
    untrimmed = make("fedtrimmedavg", trim_beta=0.0).reduce_group(
        "encoder", parts(1, 2, 3, 4, 1000), [1.0] * 5
    )
    assert np.allclose(untrimmed["w"], 1010 / 5)


def test_robust_rules_ignore_weights_as_flowers_do() -> None:
    weights = [1.0, 1.0, 1e6]
    assert np.allclose(make("fedmedian").reduce_group("g", parts(1, 2, 3), weights)["w"], 2)
    assert np.allclose(make("fedavg").reduce_group("g", parts(1, 2, 3), weights)["w"], 3, atol=1e-4)


def test_default_weighted_mean_is_bit_identical_to_flowers_fedavg() -> None:
    rng = np.random.default_rng(0)
    arrays = [{"a": rng.normal(size=(5, 7)).astype(np.float32)} for _ in range(4)]
    weights = [3.0, 11.0, 1.0, 40.0]
    records = [
        RecordDict({"arrays": ArrayRecord({"a": Array(a["a"])}), "m": MetricRecord({"w": w})})
        for a, w in zip(arrays, weights, strict=True)
    ]
    flower = aggregate_arrayrecords(records, "w")["a"].numpy()
    assert np.array_equal(weighted_mean(arrays, weights)["a"], flower)


def test_a_rule_returning_other_keys_is_an_error_naming_the_group() -> None:
    def renames(group, arrays, weights):
        return {"encoder.x": arrays[0]["encoder.w"]}

    reference = ArrayRecord({"encoder.w": Array(np.zeros(3, np.float32))})
    with pytest.raises(ValueError, match="group 'encoder'"):
        reduce_by_group(reference, [(reference, 1.0)], renames)


# -- whole rounds --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["fedmedian", "fedtrimmedavg"])
def test_blocks_are_reduced_only_over_the_sites_that_carry_them(name: str) -> None:
    strategy, arrays = one_round(name, SITES)
    assert np.allclose(arrays["encoder.w"], 0.22)  # a, b, c: 0.11, 0.22, 0.33
    assert np.allclose(arrays["blocks.segmentation.w"], 0.22)
    assert np.allclose(arrays["blocks.detection.w"], 0.33)  # only site c
    groups = ["blocks.detection", "blocks.segmentation", "encoder"]
    assert strategy.rounds[1].updated_groups == groups
    assert all(v.dtype == np.float32 for v in arrays.values())


def test_a_block_nobody_trained_keeps_its_values() -> None:
    sites = {11: ("a", ("segmentation",), 10), 22: ("b", ("segmentation",), 30)}
    _, arrays = one_round("fedmedian", sites)
    assert np.array_equal(arrays["blocks.detection.w"], GLOBAL["blocks.detection.w"])


def hostile(size: float):
    """Site 5 sends ``size``; the others send node / 100 (0.01 .. 0.04)."""
    return lambda node, key, current: np.full_like(current, size if node == 5 else node / 100)


@pytest.mark.parametrize("sign", [1, -1])
def test_a_hostile_site_does_not_move_the_median(sign: int) -> None:
    _, mild = one_round("fedmedian", FIVE_SITES, value=hostile(sign * 1.0))
    _, huge = one_round("fedmedian", FIVE_SITES, value=hostile(sign * 1e30))
    # median of 0.01 .. 0.04 and one outlier: how far out it is does not matter
    assert np.array_equal(huge["encoder.w"], mild["encoder.w"])
    assert np.allclose(huge["encoder.w"], 0.03 if sign > 0 else 0.02)


def test_trimmed_mean_cuts_a_hostile_site_that_fedavg_follows() -> None:
    _, trimmed = one_round("fedtrimmedavg", FIVE_SITES, value=hostile(1e6), trim_beta=0.2)
    _, averaged = one_round("fedavg", FIVE_SITES, value=hostile(1e6))
    # 0.01, 1e6 cut; mean of 0.02, 0.03, 0.04
    assert np.allclose(trimmed["encoder.w"], 0.03)
    assert averaged["encoder.w"].min() > 1e5
