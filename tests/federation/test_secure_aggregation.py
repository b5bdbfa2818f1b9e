"""Secure aggregation per group: what the server sees, what it computes, dropouts, groups.

Protocol tests run the real site stages (client/secagg.py) on a small fake ClientApp whose
training returns chosen arrays, through the in-process grid; one end-to-end run uses the
real ClientApp on the tiny preset.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common.secure_aggregation.quantization import quantize

from client import secagg as client_secagg
from federation import secagg, wire
from federation.reasons import Refusal
from federation.settings import RunSettings
from strategies import RoundFailedError
from strategies.secure_aggregation import SecAggConfig, SecureAggregation, SecureAggregationError
from tests.federation.fakes import ClientAppGrid, ScriptedGrid, fake_client_app, make, update
from umedpt.errors import ConfigError

# node -> (name, blocks, examples); every group is trained by two sites or more.
SITES = {
    11: ("a", ("classification",), 10),
    22: ("b", ("classification", "segmentation"), 30),
    33: ("c", ("segmentation",), 60),
    44: ("d", ("classification", "segmentation"), 20),
}
GLOBAL = {
    "encoder.w": np.zeros((3, 5), np.float32),
    "encoder.b": np.zeros(7, np.float32),
    "blocks.classification.w": np.zeros(6, np.float32),
    "blocks.segmentation.w": np.zeros((2, 2), np.float32),
}


def initial() -> ArrayRecord:
    return ArrayRecord({k: Array(v.copy()) for k, v in GLOBAL.items()})


def secure_run(
    sites: dict = SITES,
    *,
    failing: Callable[[int, Message], bool] | None = None,
    name: str = "fedavg",
    **settings,
):
    grid = ClientAppGrid(fake_client_app(sites), {n: {} for n in sites}, {}, failing=failing)
    strategy = make(name, secure_aggregation=True, **settings)
    result = strategy.start(grid, initial(), num_rounds=1, timeout=30)
    return grid, strategy, result


def users(sites: dict, key: str, nodes=None) -> list[int]:
    """The sites (of ``nodes``) whose updates ``key``'s group averages."""
    group = key.rsplit(".", 1)[0]
    return [
        n
        for n, (_, blocks, _) in sites.items()
        if (nodes is None or n in nodes) and (group == "encoder" or group.split(".")[1] in blocks)
    ]


def plain_mean(sites: dict, key: str, nodes=None, weighted: bool = False) -> np.ndarray:
    """The exact mean of ``key``'s group; equal weights, as under secure aggregation."""
    users_ = users(sites, key, nodes)
    weights = np.array([sites[n][2] if weighted else 1 for n in users_], float)
    values = np.stack([update(n, key, GLOBAL[key].shape) for n in users_])
    return np.tensordot(weights / weights.sum(), values, axes=1)


LEVELS = 4194304  # secagg-quantization-range (2**22)
STEP = 2 * 8.0 / LEVELS  # one quantisation level over +-secagg-clipping-range


def tolerance(sites: dict, key: str, nodes=None) -> float:
    """Worst-case error of the securely computed mean of ``key`` against the exact one.

    Stochastic rounding: under one level per site of ``value * w / max_weight``, divided by
    the total ``w / max_weight``; and each site's ratio ``w / max_weight`` is itself rounded
    to a level (relative error ``1 / (2 ratio levels)``), which moves the mean by at most that
    times the spread of the values. Equal weights under secure aggregation: every ratio is 1.
    """
    used = users(sites, key, nodes)
    ratios = [1.0 for _ in used]
    spread = 2 * max(np.abs(update(n, key, GLOBAL[key].shape)).max() for n in used)
    return len(used) * STEP / sum(ratios) + spread * max(1 / (2 * r * LEVELS) for r in ratios)


@pytest.fixture(autouse=True)
def _seeded_rounding() -> None:
    np.random.seed(0)  # SecAgg+'s stochastic rounding draws from NumPy's global generator


def test_aggregate_equals_plain_fedavg_within_quantisation() -> None:
    _, strategy, result = secure_run()
    scripted = ScriptedGrid(
        SITES, value=lambda node, key, current: update(node, key, current.shape)
    )
    plain = make("fedavg", weighting="equal").start(scripted, initial(), num_rounds=1, timeout=30)
    plain = plain.arrays
    for key in GLOBAL:
        got = result.arrays[key].numpy()
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, plain[key].numpy(), atol=tolerance(SITES, key))
        np.testing.assert_allclose(got, plain_mean(SITES, key), atol=tolerance(SITES, key))
    assert strategy.rounds[1].updated_groups == [
        "blocks.classification",
        "blocks.segmentation",
        "encoder",
    ]
    assert strategy.rounds[1].rejected == []


def test_the_server_never_holds_one_sites_update() -> None:
    grid, _, _ = secure_run()
    received = [r for r in grid.received if r.content.array_records]
    assert len(received) == len(SITES)
    for reply in received:
        arrays = reply.content[wire.SHARED_ARRAYS]
        for key, masked in arrays.items():
            if key.startswith(secagg.WEIGHT_PREFIX):
                continue
            got = masked.numpy()
            assert got.dtype == np.uint32
            for other in SITES:  # no site's update, plain or in its pre-mask integer form
                plain = update(other, key, got.shape)
                assert not np.allclose(got.astype(np.float64), plain, atol=0.5)
                quantised = quantize([plain], 8.0, 4194304)[0]  # weight / max_weight = 1
                assert np.mean(got == quantised) < 0.05
    # nothing else the server received carries arrays: keys and shares only
    for reply in grid.received:
        if not reply.content.array_records:
            assert set(reply.content.keys()) <= {secagg.RECORD, wire.SITE_INFO, wire.METRICS}


def test_a_site_dropping_after_masking_is_recovered() -> None:
    # Site d sends its masked input, then vanishes before the unmask stage.
    def gone(node: int, message: Message) -> bool:
        return node == 44 and message.metadata.message_type == secagg.UNMASK_TYPE

    _, strategy, result = secure_run(failing=gone)
    for key in GLOBAL:  # d's input is in the sums
        np.testing.assert_allclose(
            result.arrays[key].numpy(), plain_mean(SITES, key), atol=tolerance(SITES, key)
        )
    assert len(strategy.rounds[1].updated_groups) == 3


def test_a_site_dropping_during_training_is_unmasked_out() -> None:
    # Site d shares its keys, then never sends masked input: its pairwise masks are
    # rebuilt from the Shamir shares of its key and removed.
    def gone(node: int, message: Message) -> bool:
        return node == 44 and message.metadata.message_type == secagg.COLLECT_TYPE

    _, strategy, result = secure_run(failing=gone)
    survivors = {11, 22, 33}
    for key in GLOBAL:
        expected = plain_mean(SITES, key, nodes=survivors)
        atol = tolerance(SITES, key, survivors)
        np.testing.assert_allclose(result.arrays[key].numpy(), expected, atol=atol)
    assert [s for s, _ in strategy.rounds[1].rejected] == ["d"]


def test_too_many_dropouts_fail_the_round() -> None:
    def gone(node: int, message: Message) -> bool:
        return node in (33, 44) and message.metadata.message_type == secagg.COLLECT_TYPE

    with pytest.raises(RoundFailedError):
        secure_run(failing=gone)  # 2 of 4 sites left, threshold round(0.66 * 4) = 3


# Two sites train segmentation: if one of them drops, the other's input would be alone in
# that group's sum.
PAIR = {
    11: ("a", ("classification",), 10),
    22: ("b", ("classification",), 30),
    33: ("c", ("classification",), 60),
    44: ("d", ("segmentation",), 20),
    55: ("e", ("segmentation",), 40),
}


def test_a_group_left_with_one_input_is_never_unmasked() -> None:
    # e shares its keys, then sends no masked input: unmasking would hand the server d's
    # seed and e's key, i.e. d's segmentation update in clear.
    def gone(node: int, message: Message) -> bool:
        return node == 55 and message.metadata.message_type == secagg.COLLECT_TYPE

    grid = ClientAppGrid(fake_client_app(PAIR), {n: {} for n in PAIR}, {}, failing=gone)
    strategy = make("fedavg", secure_aggregation=True)
    with pytest.raises(RoundFailedError):  # like any round that cannot be aggregated
        strategy.start(grid, initial(), num_rounds=1, timeout=30)
    assert not [r for r in grid.received if r.metadata.message_type == secagg.UNMASK_TYPE]
    assert strategy.rounds[1].updated_groups == []


def test_a_group_left_with_one_site_after_key_sharing_sits_the_round_out() -> None:
    def gone(node: int, message: Message) -> bool:
        return node == 55 and message.metadata.message_type == secagg.SHARE_KEYS_TYPE

    grid, strategy, result = secure_run(PAIR, failing=gone)
    assert strategy.rounds[1].updated_groups == ["blocks.classification", "encoder"]
    np.testing.assert_array_equal(result.arrays["blocks.segmentation.w"].numpy(), 0)
    sent = [r for r in grid.received if r.metadata.src_node_id == 44 and r.content.array_records]
    assert not any(
        k.startswith("blocks.segmentation") for k in sent[0].content[wire.SHARED_ARRAYS].keys()
    )


def test_a_site_refuses_to_mask_a_group_without_another_member() -> None:
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    client_secagg.setup(Message(RecordDict(), dst_node_id=7, message_type="query"), context)
    state = client_secagg.SiteSecrets.load(context)
    state.stage = secagg.SHARE_KEYS  # keys shared (with nobody: no shares forwarded)
    state.save(context)
    config = ConfigRecord(
        {
            secagg.GROUPS: ["encoder"],
            secagg.GROUP_MEMBERS + "encoder": [7],
            secagg.WEIGHT_KEY: wire.NUM_EXAMPLES,
            secagg.WEIGHT_CAP: 1.0,
            **secagg.Quantization(8.0, 2**22, 2**32, 1.0).to_config(),
        }
    )
    message = Message(RecordDict({secagg.RECORD: config}), dst_node_id=7, message_type="train")
    trained = Message(
        RecordDict(
            {
                wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: 1}),
                wire.SHARED_ARRAYS: ArrayRecord({"encoder.w": Array(np.ones(2, np.float32))}),
            }
        ),
        dst_node_id=7,
        message_type="train",
    )
    with pytest.raises(client_secagg.SecAggError, match="at least one other"):
        client_secagg.masked_reply(message, context, trained)


THREE = {
    11: ("a", ("classification",), 10),
    22: ("b", ("classification",), 30),
    33: ("c", ("segmentation",), 60),
}


def test_a_block_of_a_single_site_is_refused_by_name() -> None:
    with pytest.raises(SecureAggregationError, match="blocks.segmentation.*site 'c'"):
        secure_run(THREE)


def test_an_allowed_single_site_block_is_left_out() -> None:
    grid = ClientAppGrid(fake_client_app(THREE), {n: {} for n in THREE}, {})
    strategy = make("fedavg", secure_aggregation=True, secagg_allow_unshared_blocks=True)
    result = strategy.start(grid, initial(), num_rounds=1, timeout=30)
    assert strategy.rounds[1].updated_groups == ["blocks.classification", "encoder"]
    np.testing.assert_array_equal(result.arrays["blocks.segmentation.w"].numpy(), 0)
    for key in ("encoder.w", "blocks.classification.w"):
        np.testing.assert_allclose(
            result.arrays[key].numpy(), plain_mean(THREE, key), atol=tolerance(THREE, key)
        )
    sent = [r for r in grid.received if r.metadata.src_node_id == 33 and r.content.array_records]
    assert not any(
        k.startswith("blocks.segmentation") for k in sent[0].content[wire.SHARED_ARRAYS].keys()
    )


@pytest.mark.parametrize(
    ("rule", "settings", "reason"),
    [
        ("fedmedian", {}, "single updates"),
        ("fedtrimmedavg", {}, "single updates"),
        ("fedavg", {"update_norm_bound": 1.0}, "update-norm"),
        ("fedavg", {"client_dp_noise": 1.0, "client_dp_clip": 1.0}, "client-dp-noise"),
    ],
)
def test_checks_on_single_updates_are_refused(rule: str, settings: dict, reason: str) -> None:
    with pytest.raises(ConfigError, match=f"secure-aggregation.*{reason}"):
        make(rule, secure_aggregation=True, **settings)


@pytest.mark.parametrize("rule", ["fedmedian", "fedtrimmedavg"])
def test_the_wrapper_refuses_a_rule_that_is_not_linear(rule: str) -> None:
    with pytest.raises(ValueError, match="weighted mean"):
        SecureAggregation(make(rule), SecAggConfig())


def test_fedadam_runs_on_the_unmasked_mean() -> None:
    _, _, secure = secure_run(name="fedadam", weighting="equal")
    scripted = ScriptedGrid(
        SITES, value=lambda node, key, current: update(node, key, current.shape)
    )
    plain = make("fedadam", weighting="equal").start(scripted, initial(), num_rounds=1, timeout=30)
    for key in GLOBAL:
        np.testing.assert_allclose(secure.arrays[key].numpy(), plain.arrays[key].numpy(), atol=1e-3)


def test_a_site_lying_about_its_weight_is_caught() -> None:
    lying = {**SITES, 44: ("d", ("classification", "segmentation"), 20)}
    app = fake_client_app(lying)
    real = client_secagg.masked_reply

    def inflate(message: Message, context: Context, trained: Message) -> Message:
        if message.metadata.dst_node_id == 44:  # masks weight 1, then claims 0.5 in clear
            reply = real(message, context, trained)
            reply.content[wire.METRICS][wire.UNIT_WEIGHT] = 0.5
            return reply
        return real(message, context, trained)

    client_secagg.masked_reply = inflate  # type: ignore[assignment]
    try:
        grid = ClientAppGrid(app, {n: {} for n in lying}, {})
        strategy = make("fedavg", secure_aggregation=True)
        with pytest.raises(RoundFailedError):
            strategy.start(grid, initial(), num_rounds=1, timeout=30)
    finally:
        client_secagg.masked_reply = real  # type: ignore[assignment]


def test_end_to_end_with_the_real_client_app(demo_sites, tmp_path) -> None:
    from client.app import app as client_app
    from server.federation import run_federation

    sites = [demo_sites[0], demo_sites[3]]  # two classification sites: every group shared
    settings = RunSettings(
        num_server_rounds=1,
        local_steps=1,
        out_dir=str(tmp_path / "run"),
        site_configs=",".join(str(s) for s in sites),
        state_root=str(tmp_path / "sites"),
        seed=3,
        secure_aggregation=True,
    )
    nodes = {100 + i: {"partition-id": i} for i in range(len(sites))}
    grid = ClientAppGrid(client_app, nodes, settings.to_run_config())
    report = run_federation(grid, settings)
    assert report["status"] == "completed"
    assert report["rounds"][0]["rejected"] == []
    kinds = {m.metadata.message_type for m in grid.sent}
    assert {
        secagg.SETUP_TYPE,
        secagg.SHARE_KEYS_TYPE,
        secagg.COLLECT_TYPE,
        secagg.UNMASK_TYPE,
    } <= kinds
    for reply in grid.received:  # every array the server got was masked
        for record in reply.content.array_records.values():
            assert all(np.dtype(a.dtype) == np.uint32 for a in record.values())


def test_masks_are_a_seeded_uniform_stream_of_the_full_seed() -> None:
    shapes = [(3, 4), (), (50_000,)]
    seed = bytes(range(32))
    first = secagg.mask_stream(seed, 2**32, shapes)
    assert [m.shape for m in first] == shapes
    again = secagg.mask_stream(seed, 2**32, shapes)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    # Every byte of the seed matters (Flower's pseudo_rand_gen folds it to 32 bits, so
    # seeds with equal XOR-folds give equal masks).
    folded_twin = bytes(range(4, 8)) + bytes(range(4)) + bytes(range(8, 32))
    assert not np.array_equal(first[2], secagg.mask_stream(folded_twin, 2**32, shapes)[2])
    values = first[2]
    assert values.min() >= 0 and values.max() < 2**32
    assert abs(values.mean() / 2**32 - 0.5) < 0.01  # uniform over the range
    small = secagg.mask_stream(seed, 2**20, shapes)[2]
    assert small.max() < 2**20
    with pytest.raises(ValueError, match="power of two"):
        secagg.mask_stream(seed, 3 * 2**20, shapes)


# -- issue 18: weights, threshold and unmasking a server or a site could abuse ---------------
VICTIM = 22  # the site a curious server tries to single out


def test_weights_are_equal_under_secure_aggregation_and_examples_are_refused() -> None:
    assert make("fedavg", secure_aggregation=True).rule.weighted_by_key == wire.UNIT_WEIGHT
    assert make("fedavg").weighted_by_key == wire.NUM_EXAMPLES  # auto, without secure agg.
    with pytest.raises(ConfigError, match="weighting.*equally"):
        make("fedavg", secure_aggregation=True, weighting="examples")
    with pytest.raises(ValueError, match="equally"):
        SecureAggregation(make("fedavg", weighting="examples"), SecAggConfig())


def test_a_hostile_site_claiming_a_billion_examples_does_not_take_over_the_aggregate() -> None:
    # Site d declares 1e9 examples per step when it joins, and reports 1e9 examples.
    hostile = {**SITES, 44: ("d", ("classification", "segmentation"), 10**9)}
    app = fake_client_app(hostile, claims={44: "1000000000"})
    grid = ClientAppGrid(app, {n: {} for n in hostile}, {})
    strategy = make("fedavg", secure_aggregation=True)
    result = strategy.start(grid, initial(), num_rounds=1, timeout=30)
    for key in GLOBAL:  # the honest (equal) mean of all four updates, d's counting once
        got = result.arrays[key].numpy()
        np.testing.assert_allclose(got, plain_mean(SITES, key), atol=tolerance(SITES, key))
        assert not np.allclose(got, update(44, key, got.shape), atol=0.05)
    assert strategy.rounds[1].rejected == []


class ServerCapping(SecureAggregation):
    """A curious server: every site but VICTIM gets a tiny weight cap (its input vanishes
    from the sum, which then is VICTIM's update)."""

    cap = 0.0

    def weights(self, server_round: int, nodes: list[int]) -> tuple[float, dict[int, float]]:
        return 1.0, {n: 1.0 if n == VICTIM else self.cap for n in nodes}


def refusals(grid: ClientAppGrid, kind: str) -> dict[int, str]:
    """The error replies the sites sent to messages of ``kind``, by node."""
    asked = {m.metadata.message_id: m.metadata.message_type for m in grid.sent}
    return {
        r.metadata.src_node_id: r.error.reason
        for r in grid.received
        if r.has_error() and asked.get(r.metadata.reply_to_message_id) == kind
    }


@pytest.mark.parametrize("cap", [0.0, 1e-9])
def test_sites_refuse_caps_that_would_single_one_site_out(cap: float) -> None:
    capping = type("Capping", (ServerCapping,), {"cap": cap})
    strategy = capping(make("fedavg", weighting="equal"), SecAggConfig())
    grid = ClientAppGrid(fake_client_app(SITES), {n: {} for n in SITES}, {})
    with pytest.raises(RoundFailedError):  # nobody's input: no sum at all
        strategy.start(grid, initial(), num_rounds=1, timeout=30)
    refused = refusals(grid, secagg.COLLECT_TYPE)
    assert set(SITES) - {VICTIM} <= set(refused)
    assert all("cap" in refused[n] for n in set(SITES) - {VICTIM})
    assert strategy.rounds[1].updated_groups == []


class SplitView(SecureAggregation):
    """A curious server telling the other sites a larger max-weight than VICTIM (each site's
    own checks pass: its cap is its weight, max-weight the largest cap of the table it got),
    so that their inputs weigh 2 levels against VICTIM's 2**22; it fixes its own books so
    that the weights add up."""

    def _configure(self, server_round: int, messages: list[Message], grid) -> list[Message]:
        out = super()._configure(server_round, messages, grid)
        big = float(2**21)
        for message in out:
            node = message.metadata.dst_node_id
            if node == VICTIM:
                continue
            record = message.content[secagg.RECORD]
            record[secagg.MAX_WEIGHT] = big
            if nodes := list(record.get(secagg.CAP_NODES, [])):
                record[secagg.CAPS] = [big if n == VICTIM else 1.0 for n in nodes]
            self.round.caps[node] = 2 / LEVELS  # expects 2 levels from it
        return out


def test_sites_told_different_values_cannot_be_summed() -> None:
    strategy = SplitView(make("fedavg", weighting="equal"), SecAggConfig())
    grid = ClientAppGrid(fake_client_app(SITES), {n: {} for n in SITES}, {})
    # Their pairwise masks are bound to the values they got, so VICTIM's and the others'
    # do not cancel: the unmasked "sum" is noise, and its weights do not add up.
    with pytest.raises(RoundFailedError):
        strategy.start(grid, initial(), num_rounds=1, timeout=30)
    assert strategy.rounds[1].updated_groups == []
    assert ("b", "training: group 'encoder' sum rejected") in strategy.rounds[1].rejected


def test_sites_refuse_a_threshold_of_half_the_round_or_less(monkeypatch) -> None:
    # A server asking for 2 shares of 5: two disjoint pairs could each rebuild a secret.
    monkeypatch.setattr(secagg, "reconstruction_threshold", lambda share, members: 2)
    grid = ClientAppGrid(fake_client_app(PAIR), {n: {} for n in PAIR}, {})
    strategy = make("fedavg", secure_aggregation=True)
    with pytest.raises(RoundFailedError):
        strategy.start(grid, initial(), num_rounds=1, timeout=30)
    refused = refusals(grid, secagg.SHARE_KEYS_TYPE)
    assert set(refused) == set(PAIR)
    assert all("more than half" in reason for reason in refused.values())
    assert not [m for m in grid.sent if m.metadata.message_type == secagg.COLLECT_TYPE]


def test_the_threshold_is_more_than_half_of_the_sites() -> None:
    for n in range(2, 12):
        for share in (0.1, 0.5, 0.66, 1.0):
            threshold = secagg.reconstruction_threshold(share, n)
            assert 2 * threshold > n and threshold <= max(n, 2)


def test_sites_outside_a_group_refuse_to_unmask_its_one_live_member() -> None:
    # e trains segmentation with d, then sends no masked input. The honest server asks for
    # no shares; a curious one asks only a, b and c (not in the group) for d's seed and e's
    # key: three shares of each (threshold 3 of 5) would give it d's segmentation update.
    def gone(node: int, message: Message) -> bool:
        return node == 55 and message.metadata.message_type == secagg.COLLECT_TYPE

    grid = ClientAppGrid(fake_client_app(PAIR), {n: {} for n in PAIR}, {}, failing=gone)
    with pytest.raises(RoundFailedError):
        make("fedavg", secure_aggregation=True).start(grid, initial(), num_rounds=1, timeout=30)
    request = ConfigRecord({secagg.ACTIVE: [11, 22, 33, 44], secagg.DEAD: [55]})
    asked = [
        Message(
            RecordDict({secagg.RECORD: request}), message_type=secagg.UNMASK_TYPE, dst_node_id=n
        )
        for n in (11, 22, 33)
    ]
    replies = grid.send_and_receive(asked)
    assert len(replies) == 3
    assert all(r.has_error() and "only node 44" in r.error.reason for r in replies)


def stage_two(**overrides) -> tuple[Context, Message]:
    """Site 7 after sharing keys with site 8, and a stage-2 message to it."""
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    client_secagg.setup(Message(RecordDict(), dst_node_id=7, message_type="query"), context)
    state = client_secagg.SiteSecrets.load(context)
    state.stage, state.peers, state.threshold = secagg.SHARE_KEYS, [7, 8], 2
    state.save(context)
    values = {
        secagg.GROUPS: ["encoder"],
        secagg.ROUND_GROUPS: ["encoder"],
        secagg.GROUP_MEMBERS + "encoder": [7, 8],
        secagg.CAP_NODES: [7, 8],
        secagg.CAPS: [1.0, 1.0],
        secagg.WEIGHT_CAP: 1.0,
        secagg.WEIGHT_KEY: wire.UNIT_WEIGHT,
        **secagg.Quantization(8.0, 2**22, 2**32, 1.0).to_config(),
        **overrides,
    }
    message = Message(
        RecordDict({secagg.RECORD: ConfigRecord(values)}), dst_node_id=7, message_type="train"
    )
    return context, message


def trained_reply(weight: float) -> Message:
    return Message(
        RecordDict(
            {
                wire.METRICS: MetricRecord({wire.UNIT_WEIGHT: weight, "loss": 0.0}),
                wire.SHARED_ARRAYS: ArrayRecord({"encoder.w": Array(np.ones(2, np.float32))}),
            }
        ),
        dst_node_id=7,
        message_type="train",
    )


@pytest.mark.parametrize(
    ("overrides", "weight", "reason"),
    [
        ({}, 0.0, "no zero weight"),
        ({secagg.WEIGHT_CAP: 0.5, secagg.CAPS: [0.5, 1.0]}, 1.0, "below this site's weight"),
        (  # a max-weight so large that weight 1 quantises to 0 levels
            {secagg.MAX_WEIGHT: 1e9, secagg.WEIGHT_CAP: 1e9, secagg.CAPS: [1e9, 1e9]},
            1.0,
            "quantises to zero",
        ),
        ({secagg.MAX_WEIGHT: 1e9}, 1.0, "not the largest weight cap"),
        ({secagg.CAPS: [1.0, 0.0]}, 1.0, "positive"),
        ({secagg.WEIGHT_KEY: "loss"}, 1.0, "weight key"),
    ],
)
def test_a_site_refuses_weights_that_could_single_it_out(
    overrides: dict, weight: float, reason: str
) -> None:
    context, message = stage_two(**overrides)
    with pytest.raises(client_secagg.SecAggError, match=reason):
        client_secagg.masked_reply(message, context, trained_reply(weight))


def test_require_secure_aggregation_in_a_site_file(tmp_path) -> None:
    from umedpt.config import parse_site_config

    task = {
        "name": "t",
        "type": "classification",
        "format": "npz",
        "path": "d.npz",
        "classes": ["a", "b"],
    }
    file = tmp_path / "site.toml"
    assert not parse_site_config({"tasks": [task]}, file).require_secure_aggregation
    strict = {"tasks": [task], "require_secure_aggregation": True}
    assert parse_site_config(strict, file).require_secure_aggregation
    with pytest.raises(ConfigError, match="require_secure_aggregation.*true or false"):
        parse_site_config({**strict, "require_secure_aggregation": "yes"}, file)


def test_a_site_requiring_secure_aggregation_refuses_a_plain_train_message(demo_sites) -> None:
    from client.app import app as client_app

    source = demo_sites[0]
    strict = source.with_name(f"{source.stem}-secure-only.toml")  # its data paths still resolve
    strict.write_text("require_secure_aggregation = true\n" + source.read_text())
    context = Context(1, 100, {"site-config": str(strict)}, RecordDict(), {})
    content = RecordDict(
        {
            wire.CONFIG: ConfigRecord({wire.SERVER_ROUND: 1}),
            wire.SHARED_ARRAYS: ArrayRecord({"encoder.w": Array(np.zeros(3, np.float32))}),
        }
    )
    reply = client_app(Message(content, dst_node_id=100, message_type="train"), context)
    assert reply.has_error()
    assert reply.error.reason == Refusal.SECURE_AGGREGATION_REQUIRED  # the words stay at the site
