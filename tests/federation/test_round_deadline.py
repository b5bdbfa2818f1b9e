"""One deadline per round, and replies matched to the site that was asked."""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Array, ArrayRecord, Error, Message

from federation.settings import RunSettings
from strategies import build_strategy
from tests.federation.fakes import ScriptedGrid

SITES = {11: ("a", ("segmentation",), 10), 22: ("b", ("segmentation",), 30)}
SUPERLINK_NODE_ID = 1  # Flower's own node id: the source of replies it makes up


def initial() -> ArrayRecord:
    return ArrayRecord(
        {"encoder.w": Array(np.zeros(3, np.float32)), "blocks.segmentation.w": Array(np.zeros(2))}
    )


class TimedGrid(ScriptedGrid):
    """Training takes ``train_seconds``; records the timeout of every send."""

    def __init__(self, *args, train_seconds: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.train_seconds = train_seconds
        self.timeouts: list[tuple[str, float]] = []

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        if messages and messages[0].metadata.message_type != "query":
            self.timeouts.append((messages[0].metadata.message_type, timeout))
            if messages[0].metadata.message_type == "train":
                time.sleep(self.train_seconds)
        return super().send_and_receive(messages, timeout=timeout)


def test_evaluation_gets_only_what_training_left_of_the_round() -> None:
    grid = TimedGrid(SITES, train_seconds=0.3)
    strategy = build_strategy(RunSettings(min_sites=2), query_timeout=5)
    strategy.start(grid, initial(), num_rounds=1, timeout=2.0)
    (train_kind, train_timeout), (eval_kind, eval_timeout) = grid.timeouts
    assert (train_kind, train_timeout) == ("train", 2.0)
    assert eval_kind == "evaluate" and 0 < eval_timeout <= 2.0 - 0.3


def test_a_round_without_time_left_skips_evaluation_but_keeps_its_update() -> None:
    grid = TimedGrid(SITES, train_seconds=0.2)
    strategy = build_strategy(RunSettings(min_sites=2), query_timeout=5)
    result = strategy.start(grid, initial(), num_rounds=1, timeout=0.1)
    assert [kind for kind, _ in grid.timeouts] == ["train"]
    assert 1 in result.train_metrics_clientapp and not result.evaluate_metrics_clientapp


class SuperLinkAnswersForB(ScriptedGrid):
    """Site b is gone: the SuperLink answers its training message with an error."""

    def deliver(self, message: Message) -> Message:
        if message.metadata.dst_node_id == 22 and message.metadata.message_type == "train":
            reply = Message(error=Error(code=0, reason="node unavailable"), reply_to=message)
            reply.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
            return reply
        return super().deliver(message)


def test_a_dead_site_is_named_by_the_message_it_was_sent() -> None:
    grid = SuperLinkAnswersForB(SITES)
    strategy = build_strategy(RunSettings(min_sites=1), query_timeout=5)
    strategy.start(grid, initial(), num_rounds=1, timeout=5)
    rejected = strategy.rounds[1].rejected
    assert [site for site, _ in rejected] == ["b"]
    assert "node unavailable" in rejected[0][1]
    assert f"node-{SUPERLINK_NODE_ID}" not in str(rejected)
