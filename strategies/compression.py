"""The server's side of compressed updates: decode each site's reply before anything reads it.

A site's training reply under a lossy codec carries its encoded CHANGE from the weights it
was sent (:mod:`federation.compression`); :func:`decode_reply` turns it into float32
weights (the global plus the change) in place, so that the checks of
:mod:`strategies.validation`, the defences, every rule and client-level DP see what they
always saw. A payload that cannot be decoded (a missing entry, a wrong dtype or shape, a
scale that is NaN or negative, an entry too many) rejects the reply, with the reason
class ``malformed payload`` (:class:`federation.reasons.Refusal`) and the key at fault.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, Message

from federation.codecs import Codec, PayloadError
from federation.compression import decode_update
from federation.reasons import Refusal


def decode_reply(
    reply: Message,
    codec: Codec,
    reference: Mapping[str, np.ndarray],
    keys: Sequence[str],
) -> str | None:
    """Replace the reply's encoded arrays by float32 weights; why not, or None when done.

    A reply that is an error, or carries no single ArrayRecord, is left as it is: the
    plain checks say what is wrong with it.
    """
    if reply.has_error() or len(reply.content.array_records) != 1:
        return None
    name, record = next(iter(reply.content.array_records.items()))
    try:
        entries = {k: v.numpy() for k, v in record.items()}
    except Exception as exc:  # not even an array (a pickled object, truncated bytes)
        return f"{Refusal.MALFORMED_PAYLOAD.value} ({codec.name}): cannot read it: {exc}"
    try:
        weights = decode_update(entries, reference, keys, codec)
    except PayloadError as exc:
        return f"{Refusal.MALFORMED_PAYLOAD.value} ({codec.name}): {exc}"
    reply.content[name] = ArrayRecord(
        {k: Array(np.require(v, requirements="C")) for k, v in weights.items()}  # 0-d stays 0-d
    )
    return None
