"""A site's own log: what each reply carried, in plain words and in ``<state_dir>/sent.jsonl``;
and its decoded data, kept on its disk so a new ClientApp process does not decode it again."""

from __future__ import annotations

import json
from pathlib import Path

from flwr.app import Context, RecordDict

import client.site as site_module
import umedpt_fl.inprocess  # noqa: F401  (sets the task identity messages need outside a run)
from client.app import COORDINATOR_NODE_KEY, SITE_CONFIG_NODE_KEY
from client.app import app as client_app
from client.site import SENT_LOG, SentReply, SiteRunner
from federation import wire
from federation.settings import RunSettings
from tests.federation.inprocess import ask, own_site
from umedpt.config import load_site_config
from umedpt.data.cache import site_cache_dir


def sent_entries(state: Path) -> list[dict]:
    return [json.loads(line) for line in (state / SENT_LOG).read_text().splitlines()]


def test_every_reply_is_logged_with_what_it_carried(demo_sites, tmp_path, site_log) -> None:
    state = tmp_path / "state"
    site_file = own_site(demo_sites[0], state)
    settings = RunSettings(
        local_steps=1, seed=3, state_root=str(tmp_path / "runs"), share_blocks=True
    )
    node = {SITE_CONFIG_NODE_KEY: str(site_file), COORDINATOR_NODE_KEY: "fed.example.org:9093"}
    context = Context(1, 7, node, RecordDict(), settings.to_run_config())
    shared = SiteRunner(load_site_config(site_file), settings).shared_state()
    replies = [client_app(ask(kind, 7, shared, 1), context) for kind in ("train", "evaluate")]

    entries = sent_entries(state)
    assert [(e["kind"], e["round"], e["run_key"]) for e in entries] == [
        ("train", 1, "r"),
        ("evaluate", 1, "r"),
    ]
    for reply, entry in zip(replies, entries, strict=True):
        assert not reply.has_error()
        assert entry["metrics"] == dict(reply.content[wire.METRICS])
        assert entry["to"] == "fed.example.org:9093"
        assert entry["epsilon"] is None and entry["delta"] is None  # no [privacy] table
    arrays = replies[0].content[wire.SHARED_ARRAYS]
    groups = entries[0]["groups"]
    assert sum(groups.values()) == sum(len(a.data) for a in arrays.values())  # as sent
    assert set(groups) == {"encoder", "blocks.classification"}
    assert entries[0]["train_seconds"] == entries[0]["metrics"][wire.TRAIN_SECONDS]  # as sent
    assert entries[1]["groups"] == {}

    lines = site_log()
    trained = [line for line in lines if "round 1: trained" in line]
    assert len(trained) == 1
    assert "trained tasks lesions for 1 steps in" in trained[0]
    mb = groups["encoder"] / 1e6
    assert f"sent encoder ({mb:.1f} MB), blocks.classification (" in trained[0]
    # where the message's time went (client.message_clock); no app process start in-process
    assert "to the coordinator at fed.example.org:9093; timings: received " in trained[0]
    assert trained[0].endswith(" s") and "app process up" not in trained[0]
    timings = entries[0]["timings"]
    assert list(timings) == [
        "received",
        "model_built",
        "state_restored",
        "trained",
        "reply_built",
        "handler",
    ]
    assert timings["trained"] == round(entries[0]["train_seconds"], 3)
    assert any("round 1: evaluated tasks lesions on " in line and "sent no weights" in line
               for line in lines)  # fmt: skip


def test_a_new_process_reads_the_decoded_data_from_the_sites_disk(
    demo_sites, tmp_path, site_log
) -> None:
    state = tmp_path / "state"
    site = load_site_config(own_site(demo_sites[1], state))
    settings = RunSettings(local_steps=1, seed=1, state_root=str(tmp_path / "runs"), run_key="r")
    site_module.cached_runs.cache_clear()
    first = SiteRunner(site, settings)
    assert site_cache_dir(site) == state / "cache"
    assert [p.suffix for p in site_cache_dir(site).iterdir()] == [".safetensors"]
    site_module.cached_runs.cache_clear()  # the next message's process
    second = SiteRunner(site, settings)
    loads = [line for line in site_log() if "samples in" in line]
    assert len(loads) == 2
    assert "decoded; cached in" in loads[0] and "from the cache" in loads[1]
    assert [len(r.data["train"]) for r in first.runs] == [len(r.data["train"]) for r in second.runs]
    assert any("loading task" in line for line in site_log())


def test_a_dp_site_logs_the_privacy_it_has_spent(demo_sites, tmp_path, site_log) -> None:
    state = tmp_path / "state"
    site = load_site_config(own_site(demo_sites[3], state, privacy=True))
    settings = RunSettings(
        local_steps=1, num_server_rounds=2, seed=1, state_root=str(tmp_path / "runs"), run_key="r"
    )
    runner = SiteRunner(site, settings)
    assert runner.budget is not None
    spent = runner.budget.record(1, 1)  # what train_round records once the update exists
    metrics = {wire.DP_EPSILON: spent.epsilon, wire.DP_DELTA: spent.delta, wire.NUM_EXAMPLES: 3}
    line = runner.log_sent(SentReply("train", 1, {"encoder": 2_000_000}, metrics, 0.25, 1))
    assert line.startswith("round 1: trained tasks stripes for 1 steps in 0.2 s; ")
    assert "sent encoder (2.0 MB) and 3 scalars" in line and "to the coordinator;" in line
    assert line.endswith(f"privacy spent so far: epsilon {spent.epsilon:.2f} of 8 (delta 1e-05)")
    evaluated = runner.log_sent(SentReply("evaluate", 1, {}, {wire.NUM_EXAMPLES: 4}))
    # under DP the count sent is the expected examples, not the validation set's size
    assert "on their validation samples" in evaluated and "num-examples 4" in evaluated
    assert evaluated.endswith(f"epsilon {spent.epsilon:.2f} of 8 (delta 1e-05)")  # none spent
    assert [(e["kind"], e["epsilon"], e["delta"]) for e in sent_entries(state)] == [
        ("train", spent.epsilon, 1e-5),
        ("evaluate", spent.epsilon, 1e-5),
    ]
    assert sent_entries(state)[0]["train_seconds"] == 0.25  # kept at home, in its own log
    assert site_log()[-2:] == [f"site clinic-d: {line}", f"site clinic-d: {evaluated}"]
