"""Encoded weights in Flower's records: what the server sends and what a site replies.

The codec (:mod:`federation.codecs`) is the run's ``compression`` setting, and every train
and evaluate message names it in its config (:data:`federation.wire.COMPRESSION`), so a
site decodes what it is sent by what the message says.

- server -> site: the global weights in the codec's ``downlink`` codec (int8 runs: bf16);
- site -> server: with ``none`` the weights, as before; with a lossy codec the site's
  CHANGE from the weights it was sent (its own decoded copy), encoded, which the server
  adds to the float32 weights it sent (:func:`decode_update`): every rule, the defences
  and client-level DP see float32 weights. DP-SGD's noise is in the weights before they
  are encoded (post-processing keeps the guarantee).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord

from federation.codecs import FLOAT32, Codec, Encoded, create_codec

__all__ = [
    "change_from",
    "decode_update",
    "decode_weights",
    "encode_weights",
    "to_record",
    "weights_of",
]


def to_record(encoded: Encoded) -> ArrayRecord:
    """The entries as an ArrayRecord, in their order (``np.require`` keeps a 0-d tensor,
    such as BatchNorm's ``num_batches_tracked``, 0-d: ``ascontiguousarray`` makes it 1-d)."""
    return ArrayRecord(
        {k: Array(np.require(v, requirements="C")) for k, v in encoded.entries.items()}
    )


def weights_of(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The record's arrays as numpy (PayloadError-free: a malformed Array raises here)."""
    return {k: v.numpy() for k, v in record.items()}


def encode_weights(weights: Mapping[str, np.ndarray], codec: str) -> tuple[ArrayRecord, Encoded]:
    """The global ``weights`` as the server sends them in a ``codec`` run (its downlink)."""
    encoded = create_codec(create_codec(codec).downlink).encode(weights)
    return to_record(encoded), encoded


def decode_weights(record: ArrayRecord, codec: str) -> dict[str, np.ndarray]:
    """The server's weights from a ``codec`` run's message; PayloadError if malformed."""
    return create_codec(create_codec(codec).downlink).decode(weights_of(record))


def change_from(
    trained: Mapping[str, np.ndarray], received: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """What a site sends under a lossy codec: ``trained - received`` for float32 tensors,
    any other tensor (an integer buffer) as it is."""
    return {
        k: (v - received[k]).astype(FLOAT32) if v.dtype == FLOAT32 else v
        for k, v in trained.items()
    }


def decode_update(
    entries: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    keys: Sequence[str],
    codec: Codec,
) -> dict[str, np.ndarray]:
    """A site's float32 weights from its encoded reply: ``reference`` (the float32 global
    the server sent) plus the decoded change; the keys, shapes and dtypes of ``keys`` of
    ``reference``. PayloadError naming the key at fault."""
    expected = {k: reference[k] for k in keys}
    decoded = codec.decode(entries, expected)
    if not codec.sends_change:
        return decoded
    return {
        k: (expected[k] + v).astype(FLOAT32) if v.dtype == FLOAT32 else v
        for k, v in decoded.items()
    }
