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

from umedpt_fl import wire
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
