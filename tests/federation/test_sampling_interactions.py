"""Sampling (``--sites-per-round``/``--fraction``) with the features it meets: client-level DP's
per-site accounting and its secret draw, secure aggregation with shared blocks, the
coordinator's log and the dashboard, and the int8 residual a site keeps while not drawn."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from client.round_state import RESIDUAL_FILE, RoundFolders, load_residual, save_residual
from dashboard.view import page_data
from federation.settings import RunSettings
from server.federation import SiteLog
from server.report import site_event_lines, traffic_summary
from server.rules import check_rule_settings
from strategies.central_dp import SAMPLING_SEED_KEY, rdp_epsilon
from strategies.sampling import SiteSampling
from tests.dashboard.states import round_record, state
from tests.federation.fakes import (
    FOUR,
    NAMES,
    ClientAppGrid,
    ScriptedGrid,
    fake_client_app,
    initial,
    make,
    update,
)
from umedpt.errors import ConfigError

DP = dict(sites_per_round=2, client_dp_noise=1.0, client_dp_clip=1.0, seed=3)


def test_each_sites_epsilon_composes_every_round_at_the_sampled_rate() -> None:
    rounds = 4
    strategy = make("fedavg", **DP)
    strategy.start(ScriptedGrid(FOUR), initial(), num_rounds=rounds, timeout=5)
    # the encoder and the shared block, each released every round
    expected = rdp_epsilon([(1.0, 0.5, 2 * rounds)], 1e-5)
    sites = strategy.client_dp_site_summary()
    assert sorted(sites) == ["a", "b", "c", "d"]
    for facts in sites.values():  # drawn or not, every round counts, at rate 1/2
        assert facts["epsilon"] == pytest.approx(expected)
        assert facts["releases"] == {"blocks.segmentation": rounds, "encoder": rounds}
    # a resume rebuilds the same from the rounds' records
    again = make("fedavg", **DP)
    again.restore_history([{"round": r.round, "client_dp": r.client_dp,
                            "client_dp_sites": r.client_dp_sites}
                           for r in strategy.rounds.values()])  # fmt: skip
    assert again.client_dp_site_summary()["a"]["epsilon"] == pytest.approx(expected)


def test_under_client_dp_the_draw_is_secret_and_kept_for_resume() -> None:
    strategy = make("fedavg", **DP)
    strategy.start(ScriptedGrid(FOUR), initial(), num_rounds=6, timeout=5)
    drawn = [sorted(strategy.rounds[r].bytes_sent) for r in range(1, 7)]
    public = SiteSampling(per_round=2, seed=3)
    from_run_seed = [sorted(NAMES[n] for n in public.choose(NAMES, r)) for r in range(1, 7)]
    assert drawn != from_run_seed  # the published seed does not tell who trained
    state_arrays = strategy.state_arrays()
    assert SAMPLING_SEED_KEY in state_arrays
    resumed = make("fedavg", **DP)
    resumed.load_state_arrays(state_arrays)
    resumed.start(ScriptedGrid(FOUR), initial(), num_rounds=6, timeout=5, start_round=4)
    assert [sorted(resumed.rounds[r].bytes_sent) for r in range(4, 7)] == drawn[3:]
    # without client-level DP the draw stays the run seed's (reproducible from the report)
    plain = make("fedavg", sites_per_round=2, seed=3)
    plain.start(ScriptedGrid(FOUR), initial(), num_rounds=2, timeout=5)
    assert [sorted(plain.rounds[r].bytes_sent) for r in (1, 2)] == from_run_seed[:2]


def test_fraction_under_client_dp_needs_a_fixed_expected_number_of_sites() -> None:
    with pytest.raises(ConfigError, match="client-dp-expected-sites"):
        check_rule_settings(RunSettings.of(fraction=0.5, client_dp_noise=1.0, client_dp_clip=1.0))
    check_rule_settings(
        RunSettings.of(
            fraction=0.5, client_dp_noise=1.0, client_dp_clip=1.0, client_dp_expected_sites=2
        )
    )


def test_secure_aggregation_with_shared_blocks_and_sampling_is_refused_or_allowed() -> None:
    risky = dict(secure_aggregation=True, share_blocks=True, sites_per_round=2, min_sites=2)
    with pytest.raises(ConfigError, match="secagg-allow-unshared-blocks"):
        check_rule_settings(RunSettings.of(**risky))
    check_rule_settings(RunSettings.of(**risky, secagg_allow_unshared_blocks=True))
    check_rule_settings(RunSettings.of(**{**risky, "share_blocks": False}))


# a and c share no block: a draw of {a, c} leaves both blocks with one site each
SHARED = {
    11: ("a", ("classification",), 10),
    22: ("b", ("classification", "segmentation"), 30),
    33: ("c", ("segmentation",), 60),
}
SHARED_GLOBAL = {
    "encoder.w": np.zeros((3, 5), np.float32),
    "blocks.classification.w": np.zeros(6, np.float32),
    "blocks.segmentation.w": np.zeros((2, 2), np.float32),
}
SECAGG_STEP = 2 * 8.0 / 4194304  # one level over +-secagg-clipping-range (the defaults)


def keep_into(ends: dict[int, dict[str, np.ndarray]]):
    """An ``on_round_end`` that keeps each round's global weights in ``ends``."""

    def keep(server_round: int, arrays: ArrayRecord, record: object) -> None:
        ends[server_round] = {k: v.numpy().copy() for k, v in arrays.items()}

    return keep


def test_secure_aggregation_under_sampling_aggregates_each_draw_right() -> None:
    """Three sites, two drawn a round, blocks shared: each round's aggregate is the plain
    equal-weight mean of the drawn sites that train the group (within SecAgg+'s
    quantisation); a group that only one drawn site trains is left out (kept as it was)."""
    np.random.seed(0)  # SecAgg+'s stochastic rounding draws from NumPy's global generator
    settings = dict(share_blocks=True, sites_per_round=2, min_sites=2, seed=0)
    start = ArrayRecord({k: Array(v.copy()) for k, v in SHARED_GLOBAL.items()})
    grid = ClientAppGrid(fake_client_app(SHARED), {n: {} for n in SHARED}, {})
    secure = make("fedavg", secure_aggregation=True, secagg_allow_unshared_blocks=True, **settings)
    ends: dict[int, dict[str, np.ndarray]] = {}
    secure.start(grid, start, num_rounds=2, timeout=30, on_round_end=keep_into(ends))
    current = {k: v.copy() for k, v in SHARED_GLOBAL.items()}
    names = {name: node for node, (name, _, _) in SHARED.items()}
    draws = []
    for server_round in (1, 2):
        record = secure.rounds[server_round]
        drawn = sorted(names[s] for s in record.bytes_sent)
        draws.append(drawn)
        assert len(drawn) == 2 and record.rejected == [], record
        expected_groups = set()
        for key in SHARED_GLOBAL:
            group = key.rsplit(".", 1)[0]
            users = [n for n in drawn if group == "encoder" or group.split(".")[1] in SHARED[n][1]]
            if len(users) >= 2:
                expected_groups.add(group)
                current[key] = np.mean([update(n, key, current[key].shape) for n in users], 0)
            got = ends[server_round][key]
            spread = 2 * max(np.abs(update(n, key, got.shape)).max() for n in SHARED)
            np.testing.assert_allclose(got, current[key], atol=SECAGG_STEP + spread / 4194304)
        assert record.updated_groups == sorted(expected_groups)
    assert draws == [[22, 33], [11, 22]]  # seed 0: each block summed once, left out once
    # a plain equal-weight FedAvg run draws the same sites (the run seed's draw: no secret)
    # and its encoder (which every drawn site trains) is the same within quantisation
    plain_ends: dict[int, dict[str, np.ndarray]] = {}
    plain = make("fedavg", weighting="equal", **settings)
    plain.start(ScriptedGrid(SHARED, value=lambda n, k, v: update(n, k, v.shape)),
                ArrayRecord({k: Array(v.copy()) for k, v in SHARED_GLOBAL.items()}),
                num_rounds=2, timeout=30,
                on_round_end=keep_into(plain_ends))  # fmt: skip
    assert [sorted(names[s] for s in plain.rounds[r].bytes_sent) for r in (1, 2)] == draws
    for server_round in (1, 2):
        np.testing.assert_allclose(
            ends[server_round]["encoder.w"], plain_ends[server_round]["encoder.w"], atol=1e-5
        )


def sampled(n: int, drawn: list[str], evaluated: list[str] = ()) -> dict:
    record = round_record(n, asked=drawn, replied=drawn)
    record["sites_available"] = 4
    record["bytes_sent_for_evaluation"] = {s: 1 for s in evaluated}
    return record


def test_a_site_not_drawn_is_not_dropped_in_the_log_nor_on_the_dashboard() -> None:
    everyone = ["clinic-a", "clinic-b", "clinic-c", "clinic-d"]
    rounds = [
        sampled(1, ["clinic-a", "clinic-b"], evaluated=everyone),
        sampled(2, ["clinic-c", "clinic-d"]),
        sampled(3, ["clinic-a", "clinic-c"]),
    ]
    log = SiteLog()
    no_sites = SimpleNamespace(sites={})
    lines = [line for record in rounds for line in log.lines(no_sites, record)]
    assert not [line for line in lines if "dropped" in line]
    data = page_data(state(rounds), now=rounds[-1]["started"] + 9)
    assert not [e for e in data.events if e.kind == "dropped"]
    rows = {row.name: row for row in data.sites}
    assert all(rows[s].connected for s in everyone)
    assert rows["clinic-b"].not_sampled and not rows["clinic-a"].not_sampled
    # an evaluation asks every connected site: one missing there has dropped out
    gone = [*rounds, sampled(4, ["clinic-a", "clinic-c"], evaluated=everyone[:3])]
    data = page_data(state(gone), now=gone[-1]["started"] + 9)
    assert [(e.kind, e.site) for e in data.events if e.kind == "dropped"] == [
        ("dropped", "clinic-d")
    ]
    assert not {row.name: row for row in data.sites}["clinic-d"].connected
    assert "dropped out" in " ".join(
        site_event_lines(gone[-1], joined={}, previous=gone[-2], connected_before=set(everyone))
    )


def test_the_dashboard_shows_sampling_and_traffic() -> None:
    rounds = [sampled(1, ["clinic-a", "clinic-b"]), sampled(2, ["clinic-a", "clinic-c"])]
    run = state(rounds, traffic=traffic_summary(rounds, "int8"))
    run["config"].update({"sites-per-round": 2, "compression": "int8"})
    data = page_data(run, now=rounds[-1]["started"] + 9)
    recipe = dict(data.run.recipe)
    assert recipe["sites per round"] == "2 (a random draw)"
    assert "bf16" in recipe["compression"]  # int8 sends its weights down in bf16
    assert recipe["mean traffic per round"].endswith("up")
    down, up = data.traffic
    assert down.points[0] == (1.0, float(4_000_000)) and up.points[1][1] == 4_000_000
    trained, available = data.participation
    assert trained.points == ((1.0, 2.0), (2.0, 2.0)) and available.points[0] == (1.0, 4.0)


def test_a_residual_survives_rounds_the_site_is_not_drawn_and_a_crash_mid_write(
    tmp_path, monkeypatch
) -> None:
    folders = RoundFolders(tmp_path)
    save_residual(folders, 1, {"encoder.w": np.ones(3, np.float32)})
    # not drawn in rounds 2-3: round 4 adds round 1's residual
    kept = load_residual(folders, 4)
    assert kept is not None and kept[0] == 1 and kept[1]["encoder.w"].tolist() == [1, 1, 1]

    def crash(fh, **arrays):
        fh.write(b"PK\x03\x04 truncated")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError):
        save_residual(folders, 1, {"encoder.w": np.zeros(3, np.float32)})
    monkeypatch.undo()
    kept = load_residual(folders, 4)  # the last whole residual, not a truncated file
    assert kept is not None and kept[1]["encoder.w"].tolist() == [1, 1, 1]
    assert (tmp_path / "round-00001" / RESIDUAL_FILE).is_file()
