"""Ray-free stand-ins for Flower's Grid, so federation tests run in-process and fast.

``ClientAppGrid`` (from ``umedpt_fl.inprocess``) plays every node with the real ClientApp;
``ScriptedGrid`` answers with made-up replies, for testing the strategy's checks on hostile
or broken sites.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from client import secagg as client_secagg
from federation import wire
from federation.packing import pack_message, unpack_message
from federation.settings import RunSettings
from server.rules import build_rule
from umedpt_fl.inprocess import ClientAppGrid, InProcessGrid

__all__ = ["ClientAppGrid", "ScriptedGrid", "fake_client_app", "update"]


class ScriptedGrid(InProcessGrid):
    """Nodes that describe themselves and answer with values chosen by the test."""

    def __init__(
        self,
        sites: dict[int, tuple[str, tuple[str, ...], int]],  # node -> (name, blocks, examples)
        *,
        value: Callable[[int, str, np.ndarray], np.ndarray] | None = None,
        tamper: Callable[[int, dict[str, Array], MetricRecord], RecordDict | None] | None = None,
    ) -> None:
        super().__init__(sites)
        self.sites = sites
        self.value = value or (lambda node, key, current: np.full_like(current, node / 100))
        self.tamper = tamper

    def deliver(self, message: Message) -> Message:
        # As the real ClientApp's packing mod does: what came packed is answered packed.
        packed = unpack_message(message)
        reply = self.answer(message)
        if packed and message.metadata.message_type == "train":
            pack_message(reply)
        return reply

    def answer(self, message: Message) -> Message:
        node = message.metadata.dst_node_id
        name, blocks, examples = self.sites[node]
        kind = message.metadata.message_type
        if kind == "query":
            info = ConfigRecord({wire.SITE_NAME: name, wire.BLOCKS_USED: ",".join(blocks)})
            return Message(RecordDict({wire.SITE_INFO: info}), reply_to=message)
        metrics = MetricRecord({wire.NUM_EXAMPLES: examples, wire.UNIT_WEIGHT: 1, "loss": 1.0})
        content = RecordDict({wire.METRICS: metrics})
        if kind == "train":
            arrays = {
                k: Array(self.value(node, k, v.numpy()).astype(v.numpy().dtype))
                for k, v in message.content[wire.SHARED_ARRAYS].items()
            }
            if self.tamper and (tampered := self.tamper(node, arrays, metrics)) is not None:
                content = tampered
            else:
                content[wire.SHARED_ARRAYS] = ArrayRecord(arrays)
        return Message(content, reply_to=message)


# Four sites on one block, named a-d: the sampling tests draw from them.
FOUR = {
    11: ("a", ("segmentation",), 10),
    22: ("b", ("segmentation",), 10),
    33: ("c", ("segmentation",), 10),
    44: ("d", ("segmentation",), 10),
}
NAMES = {n: s[0] for n, s in FOUR.items()}


# A small federation the strategy tests share: three sites, two of them on one block.
GLOBAL = {
    "encoder.w": np.zeros((2, 3), np.float32),
    "blocks.segmentation.w": np.zeros(4, np.float32),
    "blocks.detection.w": np.ones(4, np.float32),
}
SITES = {
    11: ("a", ("segmentation",), 10),
    22: ("b", ("segmentation",), 30),
    33: ("c", ("detection", "segmentation"), 60),
}


def initial() -> ArrayRecord:
    """Fresh global arrays of :data:`GLOBAL`."""
    return ArrayRecord({k: Array(v.copy()) for k, v in GLOBAL.items()})


def make(name: str = "fedavg", **settings):
    """A strategy as the server builds it, from RunSettings fields and rule options."""
    return build_rule(RunSettings.of(strategy=name, **settings), query_timeout=5)


# Secure aggregation's protocol tests: a ClientApp with the real site stages (client/secagg.py)
# whose training returns ``update``: random, distinct per site and key, the same every round.


def update(node: int, key: str, shape: tuple[int, ...]) -> np.ndarray:
    """A site's plain trained value of one key: random, distinct per site and key."""
    rng = np.random.default_rng(node * 1000 + sum(map(ord, key)))
    return rng.normal(0, 1, shape).astype(np.float32)


def fake_client_app(sites: dict, claims: dict[int, str] | None = None) -> ClientApp:
    """Describes itself like a site; trains by returning ``update``; real secagg stages.

    ``claims``: the ``examples-per-step`` a node declares about itself when it joins.
    """
    app = ClientApp()

    @app.query()
    def describe(message: Message, context: Context) -> Message:
        name, blocks, _ = sites[message.metadata.dst_node_id]
        info = ConfigRecord({wire.SITE_NAME: name, wire.BLOCKS_USED: ",".join(blocks)})
        if claim := (claims or {}).get(message.metadata.dst_node_id):
            info[wire.EXAMPLES_PER_STEP] = claim
        return Message(RecordDict({wire.SITE_INFO: info}), reply_to=message)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        node = message.metadata.dst_node_id
        arrays = {
            k: Array(update(node, k, v.numpy().shape))
            for k, v in message.content[wire.SHARED_ARRAYS].items()
        }
        metrics = MetricRecord(
            {wire.NUM_EXAMPLES: sites[node][2], wire.UNIT_WEIGHT: 1, "loss": 1.0}
        )
        content = RecordDict({wire.METRICS: metrics, wire.SHARED_ARRAYS: ArrayRecord(arrays)})
        return Message(content, reply_to=message)

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        metrics = MetricRecord({wire.NUM_EXAMPLES: 1, wire.UNIT_WEIGHT: 1, "loss": 1.0})
        return Message(RecordDict({wire.METRICS: metrics}), reply_to=message)

    client_secagg.register(app, lambda message, context: (train(message, context), Unlogged()))
    return app


class Unlogged:
    """A fake site keeps no log of what it sends."""

    def log_as_sent(self, sent: Message, context: Context) -> Message:
        return sent
