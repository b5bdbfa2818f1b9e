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
    Message,
    MetricRecord,
    RecordDict,
)

from federation import wire
from federation.settings import RunSettings
from server.rules import build_rule
from umedpt_fl.inprocess import ClientAppGrid, InProcessGrid

__all__ = ["ClientAppGrid", "ScriptedGrid"]


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
