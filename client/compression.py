"""The site's side of compressed updates (:mod:`federation.compression`).

What the server sends is decoded by the codec its message names; a training reply under a
lossy codec carries the site's CHANGE from the weights it was sent (its decoded copy),
encoded, and under ``int8`` what encoding dropped (the residual) is kept in the round's
folder (:func:`client.round_state.save_residual`) and added to the next change the site
sends. The residual of the round the site restored is used; it is dropped (reset) when that
round kept none (the site sent weights, or masked ones, then), when its tensors do not fit
this round's (the run's shared groups changed) or when the site restored nothing (a new
run, or a server that went back before the site's saved rounds). It is kept across rounds
the site was not sampled in: the server has had none of it yet.

Under secure aggregation the reply is masked, not encoded: a site masks its change
(:func:`as_change`), and the server adds the unmasked mean to the global it sent.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from flwr.app import ArrayRecord, Message

from client.round_state import RoundFolders, load_residual, save_residual
from federation import wire
from federation.codecs import Codec, Encoded, create_codec, encode_with_feedback, residual_fits
from federation.compression import change_from, decode_weights, to_record, weights_of

log = logging.getLogger(__name__)


def message_codec(message: Message) -> Codec:
    """The codec the server's message names (``none`` when it names none)."""
    config = message.content.config_records.get(wire.CONFIG)
    name = str(config.get(wire.COMPRESSION, "none")) if config is not None else "none"
    return create_codec(name)


def received_weights(message: Message) -> dict[str, np.ndarray]:
    """The server's weights as float32 numpy, decoded; PayloadError if they cannot be."""
    record = message.content[wire.SHARED_ARRAYS]
    return decode_weights(record, message_codec(message).name)


def received_tensors(message: Message) -> dict[str, torch.Tensor]:
    """The server's weights as torch tensors (what :class:`client.site.SiteRunner` loads)."""
    if message_codec(message).name == "none":
        return message.content[wire.SHARED_ARRAYS].to_torch_state_dict()
    return {k: torch.from_numpy(v) for k, v in received_weights(message).items()}


def _replace_arrays(reply: Message, record: ArrayRecord) -> Message:
    reply.content[wire.SHARED_ARRAYS] = record
    return reply


def as_change(reply: Message, message: Message) -> Message:
    """``reply`` with its weights replaced by its change from those ``message`` sent, when
    the message's codec sends changes (secure aggregation masks that); else as it is."""
    if reply.has_error() or not message_codec(message).sends_change:
        return reply
    change = change_from(weights_of(reply.content[wire.SHARED_ARRAYS]), received_weights(message))
    return _replace_arrays(reply, to_record(Encoded(change)))


def compressed(reply: Message, message: Message, rounds: RoundFolders, site: str) -> Message:
    """``reply`` (plain weights) encoded as ``message``'s codec asks; under error feedback
    the residual of the restored round is added and the new one saved."""
    codec = message_codec(message)
    if reply.has_error() or not codec.sends_change:
        return reply
    server_round = int(message.content[wire.CONFIG][wire.SERVER_ROUND])
    change = change_from(weights_of(reply.content[wire.SHARED_ARRAYS]), received_weights(message))
    if not codec.error_feedback:
        encoded = codec.encode(change)
    else:
        kept = load_residual(rounds, server_round)
        encoded, residual = encode_with_feedback(codec, change, kept[1] if kept else None)
        used = kept is not None and residual_fits(kept[1], change)
        log.info(
            "site %s: round %d: %s change sent with error feedback (%s)",
            site,
            server_round,
            codec.name,
            f"residual of round {kept[0]} added" if used else "no residual: reset",
        )
        save_residual(rounds, server_round, residual)
    if encoded.fallbacks:
        log.warning(
            "site %s: round %d: %d tensor(s) beyond %s's range sent as float32: %s",
            site,
            server_round,
            len(encoded.fallbacks),
            codec.name,
            ", ".join(encoded.fallbacks[:5]),
        )
    return _replace_arrays(reply, to_record(encoded))
