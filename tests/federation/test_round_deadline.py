"""One deadline per round, and replies matched to the site that was asked."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Error, Message

from federation.settings import RunSettings
from server.rules import build_rule
from strategies.round_loop import run_rounds
from tests.federation.fakes import ScriptedGrid

SITES = {11: ("a", ("segmentation",), 10), 22: ("b", ("segmentation",), 30)}
SUPERLINK_NODE_ID = 1  # Flower's own node id: the source of replies it makes up


def initial() -> ArrayRecord:
    return ArrayRecord(
        {"encoder.w": Array(np.zeros(3, np.float32)), "blocks.segmentation.w": Array(np.zeros(2))}
    )


class FakeClock:
    """Seconds that pass only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TimedGrid(ScriptedGrid):
    """Training takes ``train_seconds`` of ``clock``; records the timeout of every send."""

    def __init__(self, *args, clock: FakeClock, train_seconds: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.clock = clock
        self.train_seconds = train_seconds
        self.timeouts: list[tuple[str, float]] = []

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        if messages and messages[0].metadata.message_type != "query":
            self.timeouts.append((messages[0].metadata.message_type, timeout))
            if messages[0].metadata.message_type == "train":
                self.clock.now += self.train_seconds
        return super().send_and_receive(messages, timeout=timeout)


def one_round(train_seconds: float, timeout: float):
    """One round of FedAvg over :data:`SITES` on a fake clock; returns (grid, result)."""
    clock = FakeClock()
    grid = TimedGrid(SITES, clock=clock, train_seconds=train_seconds)
    strategy = build_rule(RunSettings(min_sites=2), query_timeout=5)
    result = run_rounds(
        strategy, grid, initial(), num_rounds=1, timeout=timeout, train_config=None,
        evaluate_config=None, evaluate_fn=None, start_round=1, on_round_end=None, clock=clock,
    )  # fmt: skip
    return grid, result


def test_evaluation_gets_only_what_training_left_of_the_round() -> None:
    grid, result = one_round(train_seconds=0.75, timeout=2.0)
    assert grid.timeouts == [("train", 2.0), ("evaluate", 2.0 - 0.75)]
    assert 1 in result.evaluate_metrics_clientapp


def test_a_round_without_time_left_skips_evaluation_but_keeps_its_update() -> None:
    grid, result = one_round(train_seconds=2.0, timeout=2.0)  # the deadline is reached
    assert grid.timeouts == [("train", 2.0)]
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
    strategy = build_rule(RunSettings(min_sites=1), query_timeout=5)
    strategy.start(grid, initial(), num_rounds=1, timeout=5)
    rejected = strategy.rounds[1].rejected
    assert [site for site, _ in rejected] == ["b"]
    assert "node unavailable" in rejected[0][1]
    assert f"node-{SUPERLINK_NODE_ID}" not in str(rejected)
