"""The parameter-group contract and the wire-format keys, defined once.

Every parameter of a site's model lives under exactly one of three prefixes:

- ``encoder.``            the shared encoder, aggregated over all sites;
- ``blocks.<block>.``     a shared block, named by the task type that uses it,
                          aggregated only over the sites that use that block;
- ``heads.<task>.``       a task's own head, which never leaves its site.

The federated client, the server and the strategies import these names from here so
that the keys on the wire cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

ENCODER = "encoder"
BLOCKS = "blocks"
HEADS = "heads"

# Wire-format keys shared by client, server and strategies.
NUM_EXAMPLES_KEY = "num-examples"  # Flower's FedAvg weights replies by this MetricRecord key
SHARED_ARRAYS_KEY = "arrays"  # ArrayRecord name of the shared weights in a message
METRICS_KEY = "metrics"  # MetricRecord name of the scalar metrics in a reply
CONFIG_KEY = "config"  # ConfigRecord name of the round's settings
SITE_NAME_KEY = "site-name"  # ConfigRecord/metric key naming the reporting site
BLOCKS_USED_KEY = "blocks-used"  # ConfigRecord key: the shared blocks a site trains
UNIT_WEIGHT_KEY = "unit-weight"  # MetricRecord key worth 1 per site, for equal weighting
SITE_INFO_KEY = "site-info"  # ConfigRecord name of a site's answer to the server's query
SERVER_ROUND_KEY = "server-round"  # set by Flower's strategies in every round's config

T = TypeVar("T")


def group_of(name: str) -> str:
    """Return the group of a parameter name: ``encoder``, ``blocks.<b>`` or ``heads.<t>``.

    Raises ValueError for a name outside the contract, so a module added in the
    wrong place is caught by tests instead of silently leaking (or not travelling).
    """
    parts = name.split(".")
    if parts[0] == ENCODER and len(parts) > 1:
        return ENCODER
    if parts[0] in (BLOCKS, HEADS) and len(parts) > 2:
        return f"{parts[0]}.{parts[1]}"
    raise ValueError(
        f"parameter '{name}' is outside the parameter-group contract "
        "(expected 'encoder.*', 'blocks.<block>.*' or 'heads.<task>.*')"
    )


def is_shared(name: str) -> bool:
    """True for weights that travel to the server (encoder and shared blocks)."""
    return not group_of(name).startswith(HEADS + ".")


def block_of(group: str) -> str | None:
    """The block name of a ``blocks.<b>`` group, else None."""
    prefix = BLOCKS + "."
    return group[len(prefix) :] if group.startswith(prefix) else None


def select(state: Mapping[str, T], groups: Iterable[str]) -> dict[str, T]:
    """Keep the entries of ``state`` whose group is one of ``groups`` (order preserved)."""
    wanted = set(groups)
    return {k: v for k, v in state.items() if group_of(k) in wanted}


def shared_only(state: Mapping[str, T]) -> dict[str, T]:
    """Keep only the shared entries (encoder and blocks) of a state dict."""
    return {k: v for k, v in state.items() if is_shared(k)}
