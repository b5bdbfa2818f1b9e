"""What each site is sent: the encoder and the blocks it trains, never heads."""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from strategies.sites import SiteInfo
from umedpt import contract


def site_payload(arrays: ArrayRecord, site: SiteInfo) -> ArrayRecord:
    """The global arrays of the site's groups, in the global key order."""
    groups = set(site.groups)
    return ArrayRecord({k: v for k, v in arrays.items() if contract.group_of(k) in groups})


def site_message(
    payload: ArrayRecord,
    config: ConfigRecord,
    *,
    node_id: int,
    message_type: str,
    arrayrecord_key: str,
    configrecord_key: str,
) -> Message:
    content = RecordDict({arrayrecord_key: payload, configrecord_key: config})
    return Message(content, message_type=message_type, dst_node_id=node_id)
