"""One site's part of a round, without Flower: proximal term, saved rounds, description."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

import client.site as site_module
from client.site import SiteRunner, describe_site
from federation import wire
from federation.settings import RunSettings
from umedpt.config import load_site_config


def runner_for(site_file, tmp_path, **settings) -> SiteRunner:
    values = dict(local_steps=3, seed=1, state_root=str(tmp_path), run_key="run")
    return SiteRunner(load_site_config(site_file), RunSettings(**{**values, **settings}))


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(sum(((a[k].float() - b[k].float()) ** 2).sum() for k in a).sqrt())


MU = 1e4  # FedProx's mu: strong enough to hold the sent weights near where they started
STEPS = 2  # the term's gradient is zero at the first step: the second is where it pulls


@pytest.fixture(scope="module")
def proximal_rounds(demo_sites, tmp_path_factory) -> SimpleNamespace:
    """Round 1 of one site from the same start: plain, with FedProx, and a FedProx reference
    written here: the site's trainer's own steps plus (mu / 2) ||w - w_sent||^2 over the
    weights the server sent (the encoder), nothing else."""
    root = tmp_path_factory.mktemp("proximal")
    plain = runner_for(demo_sites[3], root / "plain", local_steps=STEPS)
    start = {k: v.clone() for k, v in plain.shared_state().items()}
    init_blocks = block_state(plain)
    plain_out = plain.train_round(start, 1)
    pulled = runner_for(demo_sites[3], root / "prox", local_steps=STEPS)
    pulled_out = pulled.train_round(start, 1, proximal_mu=MU)

    reference = runner_for(demo_sites[3], root / "reference", local_steps=STEPS)
    reference.model.load_state_dict(start, strict=False)
    sent = [(p, start[n].clone()) for n, p in reference.model.named_parameters() if n in start]
    assert len(sent) == len(start)

    def fedprox() -> torch.Tensor:
        return 0.5 * MU * sum(((p - anchor) ** 2).sum() for p, anchor in sent)

    reference.trainer.train_steps(STEPS, shared_regularizer=fedprox)
    return SimpleNamespace(
        start=start, init_blocks=init_blocks, plain=plain, plain_out=plain_out,
        pulled=pulled, pulled_out=pulled_out, reference=reference.model.state_dict(),
    )  # fmt: skip


def test_the_proximal_term_keeps_shared_weights_near_the_global_ones(proximal_rounds) -> None:
    rounds = proximal_rounds
    assert rounds.pulled_out.shared.keys() == rounds.start.keys()
    for key, value in rounds.pulled_out.shared.items():
        torch.testing.assert_close(
            value, rounds.reference[key], rtol=0, atol=1e-7, msg=lambda m, k=key: f"{k}: {m}"
        )
    pulled = distance(rounds.pulled_out.shared, rounds.start)
    assert pulled < 0.5 * distance(rounds.plain_out.shared, rounds.start)


def test_the_proximal_term_leaves_blocks_kept_at_home_free(proximal_rounds) -> None:
    """Only what the server sent has a global value: blocks kept at home are not anchored."""
    rounds = proximal_rounds
    assert set(rounds.start) == {k for k in rounds.start if k.startswith("encoder.")}
    pulled_blocks = block_state(rounds.pulled)
    assert pulled_blocks.keys() == rounds.init_blocks.keys() and pulled_blocks
    for key, value in pulled_blocks.items():  # trained as the reference, which anchors no block
        torch.testing.assert_close(
            value, rounds.reference[key], rtol=0, atol=1e-7, msg=lambda m, k=key: f"{k}: {m}"
        )
    moved_plain = distance(block_state(rounds.plain), rounds.init_blocks)
    assert distance(pulled_blocks, rounds.init_blocks) > 0.5 * moved_plain


def block_state(runner: SiteRunner) -> dict[str, torch.Tensor]:
    state = runner.model.state_dict()
    return {
        k: v.clone() for k, v in state.items() if k.startswith("blocks.") and v.is_floating_point()
    }


def test_a_round_saved_while_blocks_were_shared_restores_without_them(demo_sites, tmp_path) -> None:
    """A site upgraded mid-run (its saved round holds heads only) still trains the next round."""
    before = runner_for(demo_sites[3], tmp_path, share_blocks=True)
    shared = before.train_round(before.shared_state(), 1).shared
    after = runner_for(demo_sites[3], tmp_path)
    encoder = {k: v for k, v in shared.items() if k.startswith("encoder.")}
    outcome = after.train_round(encoder, 2)
    assert outcome.metrics[wire.RESTORED_ROUND] == 1
    assert set(outcome.shared) == set(encoder)


def test_only_the_last_two_rounds_of_local_state_are_kept(demo_sites, tmp_path) -> None:
    runner = runner_for(demo_sites[3], tmp_path, local_steps=1)
    shared = runner.shared_state()
    for server_round in range(1, 5):
        outcome = runner.train_round(shared, server_round)
        shared = outcome.shared
        assert outcome.metrics[wire.RESTORED_ROUND] == server_round - 1
    assert sorted(p.name for p in runner.state_dir.glob("round-*")) == [
        "round-00003",
        "round-00004",
    ]
    assert runner.restore(before_round=99) == 4


def test_describing_a_site_reads_neither_data_nor_builds_a_model(demo_sites, monkeypatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("describe must not load data or build a model")

    monkeypatch.setattr(site_module, "UMedPTModel", forbidden)
    monkeypatch.setattr(site_module, "cached_runs", forbidden)
    info = describe_site(load_site_config(demo_sites[2]))
    assert info[wire.SITE_NAME] == "clinic-c"
    assert info[wire.BLOCKS_USED] == "detection"
    assert wire.decode_tasks(info[wire.TASKS]) == [
        wire.TaskDescriptor("spots", "detection", "map_50")
    ]


def test_a_site_that_keeps_its_blocks_names_none(demo_sites) -> None:
    info = describe_site(load_site_config(demo_sites[2]), share_blocks=False)
    assert info[wire.BLOCKS_USED] == ""


@pytest.mark.parametrize("text", ["a:b", "a::c", ""])
def test_malformed_task_descriptors_are_skipped(text) -> None:
    assert wire.decode_tasks(text) == []


def test_undefined_metrics_stay_home() -> None:
    import math

    from flwr.app import Message, RecordDict

    import umedpt_fl.inprocess  # noqa: F401  (sets the task identity messages need outside a run)
    from client.app import metric_reply

    asked = Message(RecordDict(), dst_node_id=5, message_type="evaluate")
    reply = metric_reply(asked, {"xray/auroc": 0.8, "xray/auroc.edema": math.nan}, 12)
    metrics = reply.content[wire.METRICS]
    assert dict(metrics) == {"xray/auroc": 0.8, wire.NUM_EXAMPLES: 12}


def test_task_metric_keys_round_trip() -> None:
    assert wire.split_task_metric(wire.task_metric("lesions", "auroc.edema")) == (
        "lesions",
        "auroc.edema",
    )
    assert wire.split_task_metric(wire.NUM_EXAMPLES) is None


def test_a_site_evaluated_before_training_says_its_local_layers_are_fresh(
    demo_sites, tmp_path, request
) -> None:
    """A late joiner's scores measure untrained heads (and blocks): its log says so, once it has
    trained it does not."""
    warnings: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
    site_log = logging.getLogger(site_module.__name__)
    site_log.addHandler(handler)
    request.addfinalizer(lambda: site_log.removeHandler(handler))
    runner = runner_for(demo_sites[3], tmp_path, local_steps=1)
    shared = runner.shared_state()
    runner.evaluate_round(shared, 1)
    assert any("no round of its own trained yet" in w and "heads and blocks" in w for w in warnings)
    warnings.clear()
    runner.train_round(shared, 1)
    runner.evaluate_round(shared, 1)
    assert warnings == []
