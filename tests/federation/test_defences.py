"""Hostile or broken updates: norm bounds, server-decided weights, identity by node (no Ray)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from client.app import app as client_app
from federation import wire
from federation.settings import RunSettings
from server.report import strategy_sections
from server.rules import build_rule
from strategies.defences import capped_shares, norm_rejections
from strategies.sites import SiteInfo, admit_sites
from tests.federation.fakes import SITES, ClientAppGrid, ScriptedGrid, initial, make
from umedpt.config import load_site_config

HONEST = (0.11 * 10 + 0.22 * 30 + 0.33 * 60) / 100  # fakes' encoder mean, weighted by examples


def one_round(strategy, grid, rounds: int = 1):
    result = strategy.start(grid, initial(), num_rounds=rounds, timeout=5)
    return {k: v.numpy() for k, v in result.arrays.items()}


def claiming(node: int, **claims: float):
    """A tamper hook: ``node`` sends honest arrays but the given metric values."""

    def tamper(n, arrays, metrics):
        if n != node:
            return None
        return RecordDict(
            {
                wire.SHARED_ARRAYS: ArrayRecord(arrays),
                wire.METRICS: MetricRecord({**metrics, **claims}),
            }
        )

    return tamper


# -- shares ----------------------------------------------------------------------------------
def test_capped_shares_redistribute_the_excess_and_fall_back_to_equal() -> None:
    assert capped_shares([1e9, 10, 30], 0.5) == pytest.approx([0.5, 0.125, 0.375])
    assert capped_shares([10, 30], 1.0) == pytest.approx([0.25, 0.75])
    # 0.2 is infeasible with 3 sites: the cap becomes 1/3
    assert capped_shares([1e9, 10, 30], 0.2) == pytest.approx([1 / 3] * 3)
    # a cap that binds twice: 0.4 each for the two large ones, the rest to the small one
    assert capped_shares([100, 100, 1], 0.4) == pytest.approx([0.4, 0.4, 0.2])


# -- the norm bounds -------------------------------------------------------------------------
def test_weights_times_1e6_are_rejected_by_the_absolute_bound() -> None:
    value = lambda node, key, v: np.full_like(v, node / 100) * (1e6 if node == 22 else 1)  # noqa: E731
    strategy = make("fedavg", update_norm_bound=10.0)
    arrays = one_round(strategy, ScriptedGrid(SITES, value=value))
    ((site, reason),) = strategy.rounds[1].rejected
    assert site == "b" and "group 'blocks.segmentation'" in reason and "group 'encoder'" in reason
    assert "update-norm-bound 10" in reason and "5.389e+05" in reason  # 0.22e6 * sqrt(6)
    assert np.allclose(arrays["encoder.w"], (0.11 * 10 + 0.33 * 60) / 70)
    assert strategy.rounds[1].update_norms["b"]["encoder"] == pytest.approx(0.22e6 * 6**0.5)


def test_relative_bound_uses_the_groups_median_with_three_sites_or_more() -> None:
    # encoder norms ~ 0.27, 0.54, 808 (x sqrt 6): c is 1500 x the median
    value = lambda node, key, v: np.full_like(v, node / 100 * (1000 if node == 33 else 1))  # noqa: E731
    strategy = make("fedavg", update_norm_ratio=5.0)
    arrays = one_round(strategy, ScriptedGrid(SITES, value=value))
    ((site, reason),) = strategy.rounds[1].rejected
    assert site == "c" and "update-norm-ratio 5 x the round's median" in reason
    # blocks.detection is carried by c alone: no median there, only encoder/segmentation
    assert "blocks.detection" not in reason
    assert np.allclose(arrays["encoder.w"], (0.11 * 10 + 0.22 * 30) / 40)


def test_relative_bound_is_not_applied_to_two_sites() -> None:
    norms = {"a": {"encoder": 1.0}, "b": {"encoder": 1e6}}
    assert norm_rejections(norms, bound=0, ratio=2) == {}
    three = {**norms, "c": {"encoder": 2.0}}
    assert list(norm_rejections(three, bound=0, ratio=2)) == ["b"]


# -- weights the server decides --------------------------------------------------------------
def test_claimed_num_examples_cannot_exceed_the_max_share() -> None:
    strategy = make("fedavg", max_site_share=0.6)
    arrays = one_round(
        strategy, ScriptedGrid(SITES, tamper=claiming(22, **{wire.NUM_EXAMPLES: 1e9}))
    )
    share_a, share_c = 0.4 * 10 / 70, 0.4 * 60 / 70  # b capped at 0.6, the rest by examples
    assert np.allclose(arrays["encoder.w"], share_a * 0.11 + 0.6 * 0.22 + share_c * 0.33)
    assert strategy.rounds[1].weights["b"] == 1e9  # claimed, capped only by its first claim


def test_a_later_claim_is_capped_at_the_first() -> None:
    rounds = {"n": 0}

    def tamper(node, arrays, metrics):
        if node == 11:
            rounds["n"] += 1
        if node != 22 or rounds["n"] < 2:
            return None
        return claiming(22, **{wire.NUM_EXAMPLES: 1e9})(node, arrays, metrics)

    strategy = make("fedavg")
    one_round(strategy, ScriptedGrid(SITES, tamper=tamper), rounds=2)
    assert strategy.rounds[2].weights == {"a": 10, "b": 30, "c": 60}


class JoinCountGrid(ScriptedGrid):
    """Sites that also say, when they join, how many examples a local step trains on."""

    def deliver(self, message: Message) -> Message:
        reply = super().deliver(message)
        if message.metadata.message_type == "query":
            info = reply.content[wire.SITE_INFO]
            info[wire.EXAMPLES_PER_STEP] = str(self.sites[message.metadata.dst_node_id][2])
        return reply


def test_a_claim_is_capped_at_the_join_time_count() -> None:
    strategy = make("fedavg", local_steps=1)
    grid = JoinCountGrid(SITES, tamper=claiming(22, **{wire.NUM_EXAMPLES: 1e9}))
    arrays = one_round(strategy, grid)
    assert strategy.rounds[1].weights["b"] == 30  # examples-per-step 30 x 1 step
    assert np.allclose(arrays["encoder.w"], HONEST)


def test_equal_weighting_ignores_what_sites_send() -> None:
    strategy = make("fedavg", weighting="equal")
    tamper = claiming(22, **{wire.UNIT_WEIGHT: 1e9, wire.NUM_EXAMPLES: 1e9})
    arrays = one_round(strategy, ScriptedGrid(SITES, tamper=tamper))
    assert np.allclose(arrays["encoder.w"], (0.11 + 0.22 + 0.33) / 3)
    assert strategy.rounds[1].weights == {"a": 1.0, "b": 1.0, "c": 1.0}


# -- identity --------------------------------------------------------------------------------
def test_a_name_claimed_by_two_nodes_is_flagged_for_both_and_kept_apart() -> None:
    sites = {**SITES, 44: ("a", ("segmentation",), 10)}  # node 44 calls itself "a"
    strategy = make("fedavg")
    one_round(strategy, ScriptedGrid(sites))
    labels = {"a (node 11)", "a (node 44)", "b", "c"}
    assert {s.name for s in strategy.sites.values()} == labels
    assert set(strategy.rounds[1].eval_metrics) == labels
    assert set(strategy.rounds[1].train_metrics) == labels
    flagged = [s for s in strategy.sites.values() if "name-conflict" in s.details]
    assert sorted(s.node_id for s in flagged) == [11, 44]
    assert all(s.claimed_name == "a" for s in flagged)
    assert strategy_sections(strategy)["name_conflicts"] == [
        {"name": "a", "nodes": [11, 44], "filed_as": ["a (node 11)", "a (node 44)"]}
    ]


def test_a_name_passes_to_a_new_node_when_its_holder_is_gone() -> None:
    known = {1: SiteInfo(1, "a", (), {wire.SITE_NAME: "a"})}
    conflicts: dict[str, set[int]] = {}
    admit_sites(
        known, {2: SiteInfo(2, "a", (), {wire.SITE_NAME: "a"})}, connected=[2], conflicts=conflicts
    )
    assert conflicts == {} and known[2].name == "a"
    # ... but while it is connected, a second claimant is a conflict
    admit_sites(
        known,
        {3: SiteInfo(3, "a", (), {wire.SITE_NAME: "a"})},
        connected=[2, 3],
        conflicts=conflicts,
    )
    assert conflicts == {"a": {2, 3}} and known[3].name == "a (node 3)"


class RegisteredGrid(ScriptedGrid):
    """A grid that knows the names the SuperNodes were registered with (authentication)."""

    def get_nodes(self):
        from flwr.proto.node_pb2 import NodeInfo

        return [NodeInfo(node_id=n, name=f"registered-{n}") for n in self.node_ids]


def test_a_registered_supernode_name_is_the_identity() -> None:
    strategy = make("fedavg")
    one_round(strategy, RegisteredGrid(SITES))
    assert {s.name for s in strategy.sites.values()} == {
        "registered-11",
        "registered-22",
        "registered-33",
    }
    assert strategy.sites[11].claimed_name == "a"


# -- end to end: the real ClientApp, one tampered reply -------------------------------------
class TamperingGrid(ClientAppGrid):
    """The real ClientApp of every node; ``tamper(node, kind, reply)`` edits a reply."""

    def __init__(self, *args, tamper, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tamper = tamper

    def deliver(self, message: Message) -> Message | None:
        reply = super().deliver(message)
        if reply is not None and not reply.has_error():
            self.tamper(message.metadata.dst_node_id, message.metadata.message_type, reply)
        return reply


def test_end_to_end_scaled_weights_inflated_count_and_stolen_name(
    demo_sites: list[Path], tmp_path
) -> None:
    settings = RunSettings(
        num_server_rounds=1,
        local_steps=1,
        out_dir=str(tmp_path),
        site_configs=",".join(str(s) for s in demo_sites[:3]),
        state_root=str(tmp_path / "sites"),
        seed=3,
        update_norm_bound=1e3,
        max_site_share=0.5,
    )

    def tamper(node: int, kind: str, reply: Message) -> None:
        if node == 100 and kind == "train":  # clinic-a: weights x 1e6
            arrays = reply.content[wire.SHARED_ARRAYS]
            reply.content[wire.SHARED_ARRAYS] = ArrayRecord(
                {k: Array(v.numpy() * np.float32(1e6)) for k, v in arrays.items()}
            )
        if node == 101 and kind == "train":  # clinic-b: a billion examples
            metrics = reply.content[wire.METRICS]
            reply.content[wire.METRICS] = MetricRecord({**metrics, wire.NUM_EXAMPLES: 10**9})
        if node == 101 and kind == "query":  # ... and calls itself clinic-c
            info = reply.content[wire.SITE_INFO]
            reply.content[wire.SITE_INFO] = ConfigRecord({**info, wire.SITE_NAME: "clinic-c"})

    nodes = {100 + i: {"partition-id": i} for i in range(3)}
    grid = TamperingGrid(client_app, nodes, settings.to_run_config(), tamper=tamper)
    strategy = build_rule(settings, query_timeout=30)
    before = initial_arrays = _initial(settings)
    result = strategy.start(
        grid,
        initial_arrays,
        num_rounds=1,
        timeout=300,
        train_config=ConfigRecord({wire.RUN_KEY: "defences"}),
        evaluate_config=ConfigRecord({wire.RUN_KEY: "defences"}),
    )
    record = strategy.rounds[1]
    ((site, reason),) = record.rejected
    assert site == "clinic-a" and "update-norm-bound" in reason and "'encoder'" in reason
    # the name is bound to the node: both claimants of clinic-c are kept, and flagged
    labels = {"clinic-a", "clinic-c (node 101)", "clinic-c (node 102)"}
    assert {s.name for s in strategy.sites.values()} == labels
    assert set(record.eval_metrics) == labels
    assert [c["nodes"] for c in strategy.name_conflicts()] == [[101, 102]]
    # the billion examples are capped at what the site said it trains per round when it
    # joined (its batch sizes x local steps), and buy at most max-site-share (0.5 of 2 sites)
    joined = sum(t.batch_size for t in load_site_config(demo_sites[1]).tasks)
    assert record.weights["clinic-c (node 101)"] == joined * settings.local_steps
    updates = {
        r.metadata.src_node_id: r.content[wire.SHARED_ARRAYS]
        for r in grid.received
        if r.metadata.message_type == "train"
    }
    for key in [k for k in before.keys() if k.startswith("encoder.")][:5]:
        expected = 0.5 * updates[101][key].numpy() + 0.5 * updates[102][key].numpy()
        assert np.allclose(result.arrays[key].numpy(), expected, rtol=1e-5, atol=1e-6), key
    norm = np.sqrt(sum(float(np.sum(v.numpy() ** 2)) for k, v in result.arrays.items()))
    assert norm < 10 * np.sqrt(sum(float(np.sum(v.numpy() ** 2)) for v in before.values()))


def _initial(settings: RunSettings) -> ArrayRecord:
    from server.federation import initial_weights

    return initial_weights(settings)
