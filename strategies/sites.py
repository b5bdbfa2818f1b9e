"""Who takes part: waiting for nodes and asking each, once, which site it is."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from strategies.records import RoundFailedError
from umedpt import contract
from umedpt_fl import wire


@dataclass(frozen=True)
class SiteInfo:
    """What a site said about itself when first asked."""

    node_id: int
    name: str
    blocks: tuple[str, ...]
    details: dict[str, str] = field(default_factory=dict)  # e.g. tasks and their metrics

    @property
    def groups(self) -> tuple[str, ...]:
        return (contract.ENCODER, *(f"{contract.BLOCKS}.{b}" for b in self.blocks))


def wait_for_nodes(grid: Grid, wanted: int, *, timeout: float) -> list[int]:
    """The connected node ids once ``wanted`` are there; RoundFailedError after ``timeout`` s.

    Flower's ``sample_nodes`` waits without a deadline; a federation must not hang forever.
    """
    deadline = time.monotonic() + timeout
    while len(nodes := list(grid.get_node_ids())) < wanted:
        if time.monotonic() > deadline:
            raise RoundFailedError(
                f"only {len(nodes)} of the {wanted} required sites connected within {timeout:.0f} s"
            )
        log(INFO, "waiting for sites: %d connected, %d required", len(nodes), wanted)
        time.sleep(1)
    return nodes


def choose_nodes(nodes: Iterable[int], fraction: float, minimum: int) -> list[int]:
    """Deterministic sample: the lowest node ids, ``fraction`` of them but at least ``minimum``."""
    ordered = sorted(nodes)
    return ordered[: max(int(len(ordered) * fraction), minimum)]


def query_sites(
    grid: Grid, node_ids: Iterable[int], *, timeout: float, config_key: str
) -> dict[int, SiteInfo]:
    """Ask each node which site it is and which blocks it trains (one QUERY message each).

    Nodes that fail or answer malformed are logged and left out; they are asked again
    the next time they are sampled.
    """
    queries = [
        Message(
            RecordDict({config_key: ConfigRecord({})}),
            message_type=MessageType.QUERY,
            dst_node_id=n,
        )
        for n in node_ids
    ]
    if not queries:
        return {}
    found: dict[int, SiteInfo] = {}
    replies = grid.send_and_receive(queries, timeout=timeout)
    # Grids give messages their ids when they send them; a reply names the query it answers
    # (its source may be the SuperLink's own node, for a node that is gone).
    asked = {q.metadata.message_id: q.metadata.dst_node_id for q in queries}
    asked.pop("", None)
    answered = set()
    for reply in replies:
        node = asked.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
        answered.add(node)
        if reply.has_error():
            log(WARNING, "site on node %s did not describe itself: %s", node, reply.error.reason)
            continue
        try:
            info = reply.content[wire.SITE_INFO]
            blocks = tuple(b for b in str(info[wire.BLOCKS_USED]).split(",") if b)
            details = {str(k): str(v) for k, v in info.items()}
            found[node] = SiteInfo(node, str(info[wire.SITE_NAME]), blocks, details)
        except (KeyError, TypeError) as exc:
            log(WARNING, "node %s sent a malformed description: %r", node, exc)
    for node in sorted({q.metadata.dst_node_id for q in queries} - answered):
        log(WARNING, "node %s did not describe itself within %.0f s", node, timeout)
    return found
