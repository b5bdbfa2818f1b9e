"""Who takes part: waiting for nodes and asking each, once, which site it is."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from logging import INFO, WARNING

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from federation import wire
from strategies.records import RoundFailedError
from umedpt import contract

# Keys the server adds to a site's details (for the report; the site never sends them).
REGISTERED_NAME = "registered-name"  # the SuperNode's name registered with authentication
NAME_CONFLICT = "name-conflict"  # which nodes claim the site's name


@dataclass(frozen=True)
class SiteInfo:
    """What a site said about itself when first asked.

    ``name`` is the label the server files the site under (records, report): the name it
    claimed, its registered SuperNode name where Flower knows one, or ``"<name> (node
    <id>)"`` when two nodes claim one name (:func:`admit_sites`). What the site sent is
    in ``details`` (``details[wire.SITE_NAME]`` is the claimed name).
    """

    node_id: int
    name: str
    blocks: tuple[str, ...]
    details: dict[str, str] = field(default_factory=dict)  # e.g. tasks and their metrics

    @property
    def groups(self) -> tuple[str, ...]:
        return (contract.ENCODER, *(f"{contract.BLOCKS}.{b}" for b in self.blocks))

    @property
    def claimed_name(self) -> str:
        return self.details.get(wire.SITE_NAME, self.name)

    def example_cap(self, local_steps: int) -> float | None:
        """Most examples a training reply may claim: ``examples-per-step`` x steps, if said."""
        try:
            per_step = float(self.details[wire.EXAMPLES_PER_STEP])
        except (KeyError, ValueError):
            return None
        if not per_step > 0 or local_steps < 1 or per_step == float("inf"):
            return None
        return per_step * local_steps


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


def registered_names(grid: Grid) -> dict[int, str]:
    """{node id: name} registered with SuperNode authentication, where the grid tells.

    Flower 1.42.0's ``Grid.get_nodes()`` returns ``flwr.proto.node_pb2.NodeInfo``, whose
    ``name`` is the one given to ``flwr supernode register --name`` (empty without
    authentication, and the base Grid's default fills only ``node_id``). A grid without
    ``get_nodes`` (the in-process ones) knows no names.
    """
    get_nodes = getattr(grid, "get_nodes", None)
    if get_nodes is None:
        return {}
    try:
        return {int(n.node_id): str(n.name) for n in get_nodes() if getattr(n, "name", "")}
    except Exception as exc:  # an older SuperLink, a grid that cannot tell: names unknown
        log(WARNING, "could not read the SuperNodes' registered names: %r", exc)
        return {}


def admit_sites(
    known: dict[int, SiteInfo],
    new: dict[int, SiteInfo],
    *,
    connected: Iterable[int],
    conflicts: dict[str, set[int]],
) -> None:
    """Add ``new`` to ``known`` (both by node id), flagging names claimed by two nodes.

    Identity is the node, not the name a site sends: a name already held by another
    connected node (or already in ``conflicts``) is a conflict, and every node claiming it
    is then filed as ``"<name> (node <id>)"`` with a ``name-conflict`` detail, so neither
    overwrites the other. A name whose earlier holder is no longer connected passes to
    the new node (a restarted SuperNode gets a new node id; without authentication it
    cannot be told from an impostor that waited for the real site to leave).
    ``conflicts`` ({name: nodes}) is updated in place.
    """
    online = set(connected)
    for node, site in sorted(new.items()):
        holders = {
            n
            for n, s in known.items()
            if n != node
            and s.details.get(wire.SITE_NAME, s.name) == site.claimed_name
            and (n in online or n in conflicts.get(site.claimed_name, set()))
        }
        if site.details.get(REGISTERED_NAME):  # the SuperLink vouches for this node's name
            holders = {n for n in holders if known[n].name == site.name}
        known[node] = site
        name = site.claimed_name
        if not holders and name not in conflicts:
            continue
        claimants = conflicts.setdefault(name, set())
        claimants.update(holders | {node})
        log(
            WARNING,
            "site name %r is claimed by nodes %s: each is filed under its node id",
            name,
            ", ".join(map(str, sorted(claimants))),
        )
        for n in claimants:
            if n in known:
                flagged = known[n]
                label = f"{flagged.details.get(REGISTERED_NAME) or name} (node {n})"
                detail = {
                    NAME_CONFLICT: "claimed by nodes " + ", ".join(map(str, sorted(claimants)))
                }
                known[n] = replace(flagged, name=label, details={**flagged.details, **detail})


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
    registered = registered_names(grid)
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
            claimed = str(info[wire.SITE_NAME])
            name = claimed
            if registered.get(node):
                name = registered[node]
                details[REGISTERED_NAME] = name
                if name != claimed:
                    log(
                        WARNING,
                        "node %s is registered as %r but calls itself %r: filed as %r",
                        node,
                        name,
                        claimed,
                        name,
                    )
            found[node] = SiteInfo(node, name, blocks, details)
        except (KeyError, TypeError) as exc:
            log(WARNING, "node %s sent a malformed description: %r", node, exc)
    for node in sorted({q.metadata.dst_node_id for q in queries} - answered):
        log(WARNING, "node %s did not describe itself within %.0f s", node, timeout)
    return found
