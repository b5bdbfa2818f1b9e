"""What every codec shares: the wire entries of a tensor, and the checks a decoder makes.

A codec turns ``{key: float32 array}`` into wire entries (``{entry: array}``, each an
``Array`` of an ArrayRecord) and back. Only float32 tensors are encoded; any other dtype
(an integer buffer) travels as it is in every codec. Decoding trusts nothing it is sent:
every key must come back once with the dtype and shape its codec writes, and no entry may
be left over; anything else is a :class:`PayloadError` that names the key (a site's reply
is then rejected by the server, a server's message refused by the site).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

SCALE_SUFFIX = "@scale"  # int8: the entry of a tensor's scale, beside the tensor's own key
# Beside a tensor that travels as it is (not float32): an empty marker entry, so that a
# decoder told nothing else (a site decoding the server's weights) never takes a genuine
# int8 or uint16 tensor for a codec's output.
RAW_SUFFIX = "@raw"
MARKER = np.zeros(0, np.uint8)
FLOAT = np.dtype(np.float32)


class PayloadError(ValueError):
    """An encoded payload that cannot be decoded; the message names the key and the fault."""


@dataclass
class Encoded:
    """Wire entries, and the keys a codec could not encode as asked (sent as float32)."""

    entries: dict[str, np.ndarray]
    fallbacks: list[str] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        """Bytes of the array data (the npy headers Flower adds are a few dozen per entry)."""
        return sum(int(v.nbytes) for v in self.entries.values())


class Codec(ABC):
    """One way weights travel. Subclasses encode and decode one float32 tensor."""

    name: ClassVar[str]
    # The codec the server sends the global weights with (int8 cannot: a site may not hold
    # the previous global to add a change to, see federation/codecs/int8.py).
    downlink: ClassVar[str]
    # True: a site sends its change from the weights it was sent (what a lossy codec keeps
    # small and precise); False (``none``): its weights, as before codecs existed.
    sends_change: ClassVar[bool] = True
    # True: the site keeps what encoding lost and adds it to its next change.
    error_feedback: ClassVar[bool] = False

    @abstractmethod
    def encode_tensor(self, key: str, values: np.ndarray) -> tuple[dict[str, np.ndarray], bool]:
        """The entries of one float32 tensor, and True when it fell back to float32."""

    @abstractmethod
    def decode_tensor(
        self, key: str, entries: Mapping[str, np.ndarray], shape: tuple[int, ...] | None
    ) -> tuple[np.ndarray, list[str]]:
        """One float32 tensor (``shape``: the expected one, None: as sent) and the entries
        it used. PayloadError when they are not what this codec writes."""

    def encode(self, values: Mapping[str, np.ndarray]) -> Encoded:
        """Wire entries of ``values``, in their key order (scale entries right after theirs)."""
        out = Encoded({})
        for key, value in values.items():
            value = np.asarray(value)
            if value.dtype != FLOAT:
                out.entries[key] = value
                out.entries[key + RAW_SUFFIX] = MARKER
                continue
            entries, fell_back = self.encode_tensor(key, value)
            out.entries.update(entries)
            if fell_back:
                out.fallbacks.append(key)
        return out

    def decode(
        self,
        entries: Mapping[str, np.ndarray],
        reference: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """The tensors of ``entries``: the keys, shapes and dtypes of ``reference`` when given
        (what the server sent), else the tensor keys and shapes as sent (a site decoding the
        server's weights; its model checks them next). PayloadError on any mismatch."""
        if reference is None:
            keys = [k for k in entries if not k.endswith((SCALE_SUFFIX, RAW_SUFFIX))]
            expected: dict[str, tuple[np.dtype, tuple[int, ...] | None]] = {
                k: (np.dtype(entries[k].dtype) if k + RAW_SUFFIX in entries else FLOAT, None)
                for k in keys
            }
        else:
            expected = {k: (np.dtype(v.dtype), tuple(v.shape)) for k, v in reference.items()}
        used: set[str] = set()
        decoded: dict[str, np.ndarray] = {}
        for key, (dtype, shape) in expected.items():
            if key not in entries:
                raise PayloadError(f"'{key}' is missing")
            if dtype != FLOAT:
                value = _checked(key, entries[key], dtype, shape)
                decoded[key], parts = value, [key, key + RAW_SUFFIX]
            else:
                value, parts = self.decode_tensor(key, entries, shape)
                decoded[key] = value
            used.update(parts)
        if extra := sorted(set(entries) - used):
            raise PayloadError(f"unexpected entr{'y' if len(extra) == 1 else 'ies'} {extra[:3]}")
        return decoded


def _checked(
    key: str, value: np.ndarray, dtype: np.dtype, shape: tuple[int, ...] | None
) -> np.ndarray:
    """``value`` if it has ``dtype`` and ``shape`` (None: any); PayloadError naming ``key``."""
    if np.dtype(value.dtype) != dtype:
        raise PayloadError(f"'{key}' is {value.dtype}, expected {dtype}")
    if shape is not None and tuple(value.shape) != shape:
        raise PayloadError(f"'{key}' has shape {list(value.shape)}, expected {list(shape)}")
    return value


def entry(
    entries: Mapping[str, np.ndarray],
    key: str,
    dtypes: tuple[np.dtype, ...],
    shape: tuple[int, ...] | None,
) -> np.ndarray:
    """The entry ``key`` in one of ``dtypes`` and ``shape``; PayloadError naming it if not."""
    if key not in entries:
        raise PayloadError(f"'{key}' is missing")
    value = entries[key]
    if np.dtype(value.dtype) not in dtypes:
        names = " or ".join(str(d) for d in dtypes)
        raise PayloadError(f"'{key}' is {value.dtype}, expected {names}")
    if shape is not None and tuple(value.shape) != shape:
        raise PayloadError(f"'{key}' has shape {list(value.shape)}, expected {list(shape)}")
    return value
