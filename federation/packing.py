"""Packed arrays: a message's weights travel as one byte buffer, not one Array per tensor.

Flower 1.42 moves a message between SuperLink, SuperNode and ClientApp object by object,
one request each (``pull_objects``/``push_object_contents_from_iterable`` in
``flwr/supercore/inflatable/inflatable_utils.py``, at most two at a time): every Array is
an object and so is each of its chunks of at most 5 MiB (``Array.slice_array``,
``FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE``). The tiny preset's ~20 MB of shared weights, ~138
tensors, thus travel as ~280 objects per hop. Packed, the same bytes travel as one uint8
Array (Flower still cuts it into 5 MiB chunks) plus a small manifest: ~7 objects.

This is transport only, below the codecs (:mod:`federation.codecs`): what a codec encodes
is packed as it is and unpacked to exactly the same entries before anything reads them,
so byte counts, checks and logs see what they saw before. A record is packed when its keys
are exactly :data:`MANIFEST` and :data:`DATA`; unpacking trusts nothing (every key once,
sizes that match, no byte left over) and raises :class:`PayloadError` naming the key.

- server: :class:`PackingGrid` packs every message it sends and unpacks every reply;
- site: :func:`packing_mod` (a ClientApp mod) unpacks what it receives and packs a plain
  training reply to a packed message. A secure-aggregation reply (``train.collect``) is
  left as its masking made it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from logging import WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Error, Message, MessageType
from flwr.common.constant import ErrorCode
from flwr.common.logger import log
from flwr.serverapp import Grid

from federation.codecs import PayloadError
from federation.reasons import Refusal

__all__ = [
    "DATA",
    "MANIFEST",
    "PackingGrid",
    "is_packed",
    "pack",
    "pack_message",
    "packing_mod",
    "unpack",
    "unpack_message",
]

MANIFEST = "packed@manifest"  # uint8 JSON: [[key, dtype, shape, offset], ...] in order
DATA = "packed@data"  # uint8: every entry's bytes, back to back, in the manifest's order
VERSION = 1
# What may travel packed: plain little-endian numbers (numpy's dtype.str), nothing else.
DTYPES = frozenset(
    np.dtype(t).newbyteorder("<").str
    for t in (
        np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32,
        np.int64, np.uint64, np.float16, np.float32, np.float64,
    )
)  # fmt: skip
MAX_MANIFEST_BYTES = 16 << 20  # far above any model's manifest; a bound before json.loads
MAX_NDIM = 32  # numpy's own limit
# Far above any model's tensor count (a ViT-H with an int8 scale beside every tensor: ~1,000);
# a bound on what a reply of zero-size entries could make the server build.
MAX_ENTRIES = 65_536


def pack(entries: Mapping[str, np.ndarray]) -> ArrayRecord:
    """``entries`` as one packed record: the manifest and the bytes of every entry, in order."""
    manifest, views, offset = [], [], 0
    for key, value in entries.items():
        array = np.asarray(value)
        dtype = array.dtype.str
        if dtype not in DTYPES:
            raise ValueError(f"'{key}': dtype {array.dtype} cannot travel packed")
        manifest.append([key, dtype, list(array.shape), offset])
        views.append(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
        offset += array.nbytes
    data = np.concatenate(views) if views else np.zeros(0, np.uint8)
    text = json.dumps({"version": VERSION, "entries": manifest}).encode()
    return ArrayRecord({MANIFEST: Array(np.frombuffer(text, np.uint8).copy()), DATA: Array(data)})


def is_packed(record: ArrayRecord) -> bool:
    return set(record.keys()) == {MANIFEST, DATA}


def _bytes_of(record: ArrayRecord, key: str) -> np.ndarray:
    try:
        array = record[key].numpy()
    except Exception as exc:  # not even an array (truncated npy bytes, a pickle)
        raise PayloadError(f"'{key}': cannot read it: {exc}") from None
    if array.dtype != np.uint8 or array.ndim != 1:
        raise PayloadError(f"'{key}': expected 1-d uint8, got {array.dtype} {array.shape}")
    return array


def _entries_of(manifest: np.ndarray) -> list:
    if manifest.size > MAX_MANIFEST_BYTES:
        raise PayloadError(f"'{MANIFEST}': {manifest.size} bytes, at most {MAX_MANIFEST_BYTES}")
    try:
        parsed = json.loads(manifest.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: [[[[...
        raise PayloadError(f"'{MANIFEST}': not JSON: {type(exc).__name__}") from None
    if not isinstance(parsed, dict) or not (
        _is_int(parsed.get("version")) and parsed["version"] == VERSION
    ):
        raise PayloadError(f"'{MANIFEST}': expected version {VERSION}")
    entries = parsed.get("entries")
    if not isinstance(entries, list):
        raise PayloadError(f"'{MANIFEST}': 'entries' must be a list")
    if len(entries) > MAX_ENTRIES:
        raise PayloadError(f"'{MANIFEST}': {len(entries)} entries, at most {MAX_ENTRIES}")
    return entries


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def unpack(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The entries of a packed record, in order; PayloadError naming the key at fault."""
    if not is_packed(record):
        raise PayloadError(f"a packed record holds '{MANIFEST}' and '{DATA}', got {list(record)}")
    entries = _entries_of(_bytes_of(record, MANIFEST))
    data = _bytes_of(record, DATA)
    out: dict[str, np.ndarray] = {}
    position = 0
    for n, entry in enumerate(entries):
        if not (isinstance(entry, list) and len(entry) == 4 and isinstance(entry[0], str)):
            raise PayloadError(f"'{MANIFEST}': entry {n} is not [key, dtype, shape, offset]")
        key, dtype, shape, offset = entry
        if key in out:
            raise PayloadError(f"'{key}': packed twice")
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise PayloadError(f"'{key}': dtype {dtype!r} is not one that travels packed")
        if not (
            isinstance(shape, list)
            and len(shape) <= MAX_NDIM
            and all(_is_int(d) and 0 <= d <= data.size for d in shape)
        ):
            raise PayloadError(f"'{key}': shape {shape!r} is not a list of sizes")
        if not _is_int(offset) or offset != position:
            raise PayloadError(f"'{key}': offset {offset!r}, expected {position} (back to back)")
        size = math.prod(shape) * np.dtype(dtype).itemsize  # Python ints: no overflow
        if position + size > data.size:
            raise PayloadError(
                f"'{key}': needs {size} bytes at offset {position}, the data has {data.size}"
            )
        values = np.frombuffer(data, np.dtype(dtype), math.prod(shape), position)
        if values.dtype == np.bool_ and values.view(np.uint8).max(initial=0) > 1:
            raise PayloadError(f"'{key}': bool values other than 0 and 1")
        try:
            out[key] = values.reshape(shape).copy()  # its own aligned memory
        except ValueError as exc:  # a zero-size shape numpy still cannot make
            raise PayloadError(f"'{key}': shape {shape!r}: {exc}") from None
        position += size
    if position != data.size:
        raise PayloadError(f"'{DATA}': {data.size - position} bytes left over after the entries")
    return out


def pack_message(message: Message, shared: dict | None = None) -> bool:
    """Pack each ArrayRecord of ``message`` (of two arrays or more) in place; whether any was.

    ``shared``: records already packed in this push, by the identity of their arrays' bytes. The
    server sends every site of the same groups the same arrays; they then share one
    packed buffer instead of holding one copy of the weights per site."""
    if message.has_error():
        return False
    packed = False
    for name, record in list(message.content.array_records.items()):
        if len(record) > 1 and not is_packed(record):
            identity = tuple((k, id(v.data)) for k, v in record.items())
            if shared is None or identity not in shared:
                made = pack({k: v.numpy() for k, v in record.items()})
                if shared is not None:
                    shared[identity] = (made, record)  # the record keeps its ids alive
            else:
                made = shared[identity][0]
            message.content[name] = made
            packed = True
    return packed


def unpack_message(message: Message) -> bool:
    """Unpack each packed ArrayRecord of ``message`` in place; whether any was packed.

    PayloadError, naming the key, when one cannot be unpacked (the message is then left
    as it came)."""
    if message.has_error():
        return False
    unpacked = {
        name: unpack(record)
        for name, record in message.content.array_records.items()
        if is_packed(record)
    }
    for name, entries in unpacked.items():
        message.content[name] = ArrayRecord({k: Array(v) for k, v in entries.items()})
    return bool(unpacked)


def packing_mod(
    message: Message, context: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    """A ClientApp mod: unpack what arrives; pack the reply to a packed plain train message.

    Only ``train`` replies are packed: a secure-aggregation reply (``train.collect``) is left
    as its masking made it. A payload that cannot be unpacked raises PayloadError (the site's
    ``reason_only`` mod answers ``malformed payload``)."""
    packed = unpack_message(message)
    reply = call_next(message, context)
    if packed and message.metadata.message_type == MessageType.TRAIN:
        pack_message(reply)
    return reply


class PackingGrid(Grid):
    """A Grid that sends messages packed and hands on replies unpacked; else ``grid``'s.

    A reply that cannot be unpacked becomes an error reply (reason ``malformed payload``
    and the key at fault), which the strategy rejects like any other."""

    def __init__(self, grid: Grid, poll_seconds: float | None = None) -> None:
        self.grid = grid
        self.poll_seconds = poll_seconds
        self._sent: dict[str, Message] = {}  # sent, not yet answered: for error replies

    # -- what changes -------------------------------------------------------------------
    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = self._packed(messages)
        ids = list(self.grid.push_messages(messages))
        # Kept until answered, for an error reply; the packed buffers are shared (one per push).
        self._sent.update({m.metadata.message_id: m for m in messages if m.metadata.message_id})
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._unpacked(list(self.grid.pull_messages(message_ids)))

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Send, then wait for the replies: the inner grid's loop, or ours with ``poll_seconds``.

        Flower's deployment grid (``HttpGrid.send_and_receive``) sleeps a fixed 3 s between
        polls: up to 3 s on each phase of a round, four phases under secure aggregation. A
        poll is one small request to the SuperLink, so the server polls it faster
        (``poll_seconds``); the simulation's grid already polls every 0.1 s."""
        if self.poll_seconds is None:
            messages = self._packed(messages)
            replies = list(self.grid.send_and_receive(messages, timeout=timeout))
            # The inner grid set each message's id when it pushed it.
            self._sent.update({m.metadata.message_id: m for m in messages})
            out = self._unpacked(replies)
            for message in messages:  # answered or not: nothing left to wait for
                self._sent.pop(message.metadata.message_id, None)
            return out
        pending = set(self.push_messages(messages))
        end = time.monotonic() + (timeout if timeout is not None else 0.0)
        replies: list[Message] = []
        while pending and (timeout is None or time.monotonic() < end):
            batch = list(self.grid.pull_messages(pending))
            # By what they answer, before unpacking: a reply dropped as malformed is no
            # longer pending either (the SuperLink has handed it over).
            pending.difference_update(m.metadata.reply_to_message_id for m in batch)
            replies.extend(self._unpacked(batch))
            if pending:
                time.sleep(self.poll_seconds)
        for message_id in pending:  # never answered: nothing to keep for an error reply
            self._sent.pop(message_id, None)
        return replies

    @staticmethod
    def _packed(messages: Iterable[Message]) -> list[Message]:
        shared: dict = {}
        messages = list(messages)
        for message in messages:
            pack_message(message, shared)
        return messages

    def _unpacked(self, replies: Iterable[Message]) -> list[Message]:
        out = []
        for reply in replies:
            asked = self._sent.pop(reply.metadata.reply_to_message_id, None)
            try:
                unpack_message(reply)
            except Exception as exc:  # PayloadError; anything else is a defect, not a crash
                detail = exc if isinstance(exc, PayloadError) else f"{type(exc).__name__}: {exc}"
                reason = f"{Refusal.MALFORMED_PAYLOAD.value} (packed arrays): {detail}"
                log(WARNING, "reply from node %s: %s", reply.metadata.src_node_id, reason)
                if asked is None:
                    continue  # nothing to answer for: the strategy sees the site as missing
                reply = Message(Error(code=ErrorCode.UNKNOWN, reason=reason), reply_to=asked)
            out.append(reply)
        return out

    # -- the rest is the inner grid's ---------------------------------------------------
    def set_run(self, run) -> None:
        self.grid.set_run(run)

    @property
    def run(self):
        return self.grid.run

    def create_message(self, *args, **kwargs) -> Message:
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self):
        # An in-process grid (umedpt_fl.inprocess) has none: then Flower's default (ids only).
        inner = getattr(self.grid, "get_nodes", None)
        return inner() if inner is not None else super().get_nodes()

    def __getattr__(self, name: str):  # anything else a concrete grid offers (close ...)
        if name == "grid":  # not set yet: no recursion
            raise AttributeError(name)
        return getattr(self.grid, name)
