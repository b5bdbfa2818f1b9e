"""Per-group aggregation, payload selection and rejection of bad replies (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from federation import wire
from strategies import RoundFailedError, merged_metrics
from tests.federation.fakes import GLOBAL, SITES, ScriptedGrid, initial, make


def run(strategy_name: str = "fedavg", rounds: int = 1, min_sites: int = 1):
    grid = ScriptedGrid(SITES)
    strategy = make(strategy_name, min_sites=min_sites)
    result = strategy.start(grid, initial(), num_rounds=rounds, timeout=5)
    return grid, strategy, result


def test_encoder_over_all_sites_blocks_only_over_their_users() -> None:
    _, strategy, result = run()
    expected_all = (0.11 * 10 + 0.22 * 30 + 0.33 * 60) / 100
    assert np.allclose(result.arrays["encoder.w"].numpy(), expected_all)
    assert np.allclose(result.arrays["blocks.segmentation.w"].numpy(), expected_all)
    assert np.allclose(result.arrays["blocks.detection.w"].numpy(), 0.33)  # only site c
    assert strategy.rounds[1].updated_groups == [
        "blocks.detection",
        "blocks.segmentation",
        "encoder",
    ]


def test_equal_weighting_ignores_example_counts() -> None:
    grid = ScriptedGrid(SITES)
    strategy = make("fedavg", min_sites=1, weighting="equal")
    result = strategy.start(grid, initial(), num_rounds=1, timeout=5)
    assert np.allclose(result.arrays["encoder.w"].numpy(), (0.11 + 0.22 + 0.33) / 3)


def test_each_site_is_sent_only_its_groups_and_never_heads() -> None:
    grid, strategy, _ = run()
    for message in grid.sent:
        if message.metadata.message_type not in ("train", "evaluate"):
            continue
        keys = set(message.content[wire.SHARED_ARRAYS].keys())
        blocks = SITES[message.metadata.dst_node_id][1]
        assert keys == {"encoder.w", *(f"blocks.{b}.w" for b in blocks)}
    record = strategy.rounds[1]
    assert record.bytes_sent["c"] > record.bytes_sent["a"] == record.bytes_sent["b"]


def _strategy_with(tamper, min_sites=1):
    grid = ScriptedGrid(SITES, tamper=tamper)
    strategy = make("fedavg", min_sites=min_sites)
    return grid, strategy


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("head", "unexpected ['heads.t.w']"),
        ("shape", "has shape (3,)"),
        ("nan", "non-finite"),
        ("weight", "must be a positive number"),
        ("no-arrays", "expected 1 ArrayRecord"),
        ("dtype", "dtype float64"),
    ],
)
def test_hostile_replies_are_rejected_naming_the_site(bad: str, reason: str) -> None:
    def tamper(node, arrays, metrics):
        if node != 22:
            return None
        if bad == "head":
            arrays["heads.t.w"] = Array(np.zeros(2, np.float32))
        elif bad == "shape":
            arrays["blocks.segmentation.w"] = Array(np.zeros(3, np.float32))
        elif bad == "nan":
            arrays["encoder.w"] = Array(np.full((2, 3), np.nan, np.float32))
        elif bad == "weight":
            metrics[wire.NUM_EXAMPLES] = -5
        elif bad == "dtype":
            arrays["encoder.w"] = Array(np.zeros((2, 3), np.float64))
        if bad == "no-arrays":
            return RecordDict({"m": metrics})
        return RecordDict({"a": ArrayRecord(arrays), "m": metrics})

    grid, strategy = _strategy_with(tamper)
    result = strategy.start(grid, initial(), num_rounds=1, timeout=5)
    rejected = strategy.rounds[1].rejected
    assert len(rejected) == 1 and rejected[0][0] == "b"
    assert reason in rejected[0][1]
    # the hostile site had no influence: the mean of a (10) and c (60) only
    assert np.allclose(result.arrays["encoder.w"].numpy(), (0.11 * 10 + 0.33 * 60) / 70)


def test_too_few_usable_replies_fail_the_round_loudly() -> None:
    def nan_everywhere(node, arrays, metrics):
        arrays["encoder.w"] = Array(np.full((2, 3), np.inf, np.float32))
        return RecordDict({"a": ArrayRecord(arrays), "m": metrics})

    grid, strategy = _strategy_with(nan_everywhere, min_sites=2)
    with pytest.raises(RoundFailedError, match="fewer than 2 sites"):
        strategy.start(grid, initial(), num_rounds=1, timeout=5)


class FakeTime:
    """``time`` for strategies.sites: a sleep moves the clock instead of waiting."""

    def __init__(self) -> None:
        self.now, self.sleeps = 0.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_waiting_for_sites_has_a_deadline(monkeypatch) -> None:
    clock = FakeTime()
    monkeypatch.setattr("strategies.sites.time", clock)
    strategy = make("fedavg", min_sites=5, node_wait_timeout=2.5)
    with pytest.raises(RoundFailedError, match="only 3 of the 5 required sites connected"):
        strategy.start(ScriptedGrid(SITES), initial(), num_rounds=1, timeout=5)
    assert clock.sleeps == [1, 1, 1]  # polled at 0, 1, 2 and 3 s: past 2.5 s, it gives up


def test_fedprox_sends_mu_and_averages_like_fedavg() -> None:
    grid = ScriptedGrid(SITES)
    strategy = make("fedprox", min_sites=1, proximal_mu=0.5)
    result = strategy.start(grid, initial(), num_rounds=1, timeout=5)
    train = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert {float(m.content[wire.CONFIG][wire.PROXIMAL_MU]) for m in train} == {0.5}
    assert np.allclose(
        result.arrays["encoder.w"].numpy(), (0.11 * 10 + 0.22 * 30 + 0.33 * 60) / 100
    )


def test_fedadam_keeps_float32_and_leaves_untrained_blocks_alone() -> None:
    sites = {11: ("a", ("segmentation",), 10), 22: ("b", ("segmentation",), 30)}
    grid = ScriptedGrid(sites)
    strategy = make("fedadam", min_sites=1, server_lr=0.1)
    result = strategy.start(grid, initial(), num_rounds=2, timeout=5)
    for key, value in result.arrays.items():
        assert value.numpy().dtype == np.float32, key
    assert np.array_equal(result.arrays["blocks.detection.w"].numpy(), GLOBAL["blocks.detection.w"])
    # Adam on the server (Reddi et al. 2021, Flower's defaults beta1 0.9, beta2 0.99, tau 1e-3)
    # over the sites' weighted mean, which is the same every round: a 0.11, b 0.22.
    mean = (np.float32(0.11) * 10 + np.float32(0.22) * 30) / 40
    x, m, v = 0.0, 0.0, 0.0
    for t in (1, 2):
        delta = mean - x
        m = 0.9 * m + 0.1 * delta
        v = 0.99 * v + 0.01 * delta**2
        step = 0.1 * np.sqrt(1 - 0.99 ** (t + 1)) / (1 - 0.9 ** (t + 1))
        x = float(np.float32(x + step * m / (np.sqrt(v) + 1e-3)))  # the model is float32
    for key in ("encoder.w", "blocks.segmentation.w"):
        np.testing.assert_allclose(result.arrays[key].numpy(), x, rtol=1e-6)
    state = strategy.state_arrays()
    np.testing.assert_allclose(state["m_t/encoder.w"], m, rtol=1e-6)
    assert "m_t/encoder.w" in state and not np.any(state["m_t/blocks.detection.w"])

    restored = make("fedadam", min_sites=1, server_lr=0.1)
    restored.load_state_arrays(state)
    assert all(np.array_equal(restored.m_t[k], strategy.m_t[k]) for k in strategy.m_t)


def test_metrics_of_different_tasks_are_merged_per_key() -> None:
    replies = [
        RecordDict({"m": MetricRecord({"num-examples": 10, "x/acc": 0.5})}),
        RecordDict({"m": MetricRecord({"num-examples": 30, "x/acc": 1.0, "y/dice": 0.2})}),
    ]
    merged = merged_metrics(replies, "num-examples")
    assert merged["x/acc"] == pytest.approx(0.875)
    assert merged["y/dice"] == pytest.approx(0.2)
    assert merged["num-examples"] == 40


def test_evaluation_runs_every_n_rounds_and_after_the_last() -> None:
    grid = ScriptedGrid(SITES)
    strategy = make("fedavg", min_sites=1, eval_every=2)
    strategy.start(grid, initial(), num_rounds=3, timeout=5)
    evaluated = {
        int(m.content[wire.CONFIG][wire.SERVER_ROUND])
        for m in grid.sent
        if m.metadata.message_type == "evaluate"
    }
    assert evaluated == {2, 3}


class ReversedGrid(ScriptedGrid):
    """Replies come back in the reverse of the order they were sent (as from real sites)."""

    def send_and_receive(self, messages, *, timeout=None):
        return list(reversed(super().send_and_receive(messages, timeout=timeout)))


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedadam"])
def test_the_aggregate_does_not_depend_on_the_order_replies_arrive(name: str) -> None:
    """Float sums in arrival order made the same simulation end differently run to run."""

    def value(node, key, current):
        return current + np.float32(0.1) * node + np.float32(1e-7) * node**3

    results = []
    for grid_type in (ScriptedGrid, ReversedGrid):
        strategy = make(name, min_sites=1)
        grid = grid_type(SITES, value=value)
        results.append(strategy.start(grid, initial(), num_rounds=2, timeout=5).arrays)
    for key in results[0].keys():
        assert results[0][key].numpy().tobytes() == results[1][key].numpy().tobytes(), key
