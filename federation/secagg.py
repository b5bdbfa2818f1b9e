"""Secure aggregation per parameter group: what the sites and the server both need.

The protocol is Flower's SecAgg+ (``flwr/server/workflow/secure_aggregation/
secaggplus_workflow.py`` and ``flwr/client/mod/secure_aggregation/secaggplus_mod.py`` of
Flower 1.42.0), run over Message-API messages and applied per parameter group: the
encoder is masked over all sites of the round, each ``blocks.<b>`` over the sites that
train it. Each site has one set of keys per round; the masks of one group are derived
from those keys with the group's name (HKDF, ``derive_seed``), so two groups never share
a mask. See docs/secure-aggregation.md.

Only wire names and the mask/quantisation arithmetic live here (the client's stages are in
``client/secagg.py``, the server's in ``strategies/secure_aggregation.py``); every
cryptographic primitive is Flower's or the ``cryptography`` package's.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    generate_shared_key,
)
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    parameters_addition,
    parameters_mod,
    parameters_subtraction,
)
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
)

from federation import wire
from umedpt import contract

# Message types (``<category>.<action>``) of the four stages; the ClientApp routes them.
SETUP = "secagg_setup"  # query: advertise this round's two public keys
SHARE_KEYS = "secagg_share_keys"  # query: Shamir shares of the secrets, encrypted per peer
COLLECT = "secagg_train"  # train: train as usual, reply with masked vectors
UNMASK = "secagg_unmask"  # query: shares of survivors' seeds and of dropped sites' keys
STAGES = (SETUP, SHARE_KEYS, COLLECT, UNMASK)
SETUP_TYPE, SHARE_KEYS_TYPE, UNMASK_TYPE = (f"query.{s}" for s in (SETUP, SHARE_KEYS, UNMASK))
COLLECT_TYPE = f"train.{COLLECT}"

# The ConfigRecord carrying a stage's protocol values, both ways.
RECORD = "secagg"
# Keys of RECORD.
PUBLIC_KEY_1 = "pk1"  # masks (ECDH with peers -> pairwise mask seeds)
PUBLIC_KEY_2 = "pk2"  # encryption of the shares sent to peers
PEERS = "peers"  # node ids, in the order of PEER_PK1 / PEER_PK2
PEER_PK1 = "peer-pk1"
PEER_PK2 = "peer-pk2"
THRESHOLD = "threshold"  # Shamir shares needed to rebuild a site's secret (> half of PEERS)
DESTINATIONS = "destinations"
CIPHERTEXTS = "ciphertexts"
SOURCES = "sources"
GROUPS = "groups"  # the groups this site masks, in order
ROUND_GROUPS = "round-groups"  # every group summed this round (a site checks them all)
GROUP_MEMBERS = "members."  # + group: node ids whose inputs are summed in that group
CLIPPING_RANGE = "clipping-range"
QUANTIZATION_RANGE = "quantization-range"
MODULUS_RANGE = "modulus-range"
MAX_WEIGHT = "max-weight"
WEIGHT_CAP = "weight-cap"  # this site's cap; it refuses one below its own weight
CAP_NODES = "cap-nodes"  # every site of stage 2 ...
CAPS = "caps"  # ... and its cap: the same table goes to every site
WEIGHT_KEY = "weight-key"  # the reply metric that is the site's weight
# The reply metrics a weight may be read from (a site refuses any other key).
WEIGHT_KEYS = (wire.UNIT_WEIGHT, wire.NUM_EXAMPLES)
ACTIVE = "active"
DEAD = "dead"
SHARE_OWNERS = "share-owners"
SHARES = "shares"

# In a masked reply's ArrayRecord: the masked factor (quantised weight) of each group.
WEIGHT_PREFIX = "secagg-weight."
MASKED_DTYPE = np.dtype(np.uint32)  # masked values lie in [0, modulus); 2**32 fits

DEFAULT_MODULUS_RANGE = 2**32  # Flower's default; must be a power of two <= 2**32


@dataclass(frozen=True)
class Quantization:
    """How values become integers before masking (SecAgg+'s four numbers)."""

    clipping_range: float
    quantization_range: int
    modulus_range: int
    max_weight: float

    def to_config(self) -> dict[str, float | int]:
        return {
            CLIPPING_RANGE: float(self.clipping_range),
            QUANTIZATION_RANGE: int(self.quantization_range),
            MODULUS_RANGE: int(self.modulus_range),
            MAX_WEIGHT: float(self.max_weight),
        }

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> Quantization:
        return cls(
            float(config[CLIPPING_RANGE]),  # type: ignore[arg-type]
            int(config[QUANTIZATION_RANGE]),  # type: ignore[call-overload]
            int(config[MODULUS_RANGE]),  # type: ignore[call-overload]
            float(config[MAX_WEIGHT]),  # type: ignore[arg-type]
        )

    def quantized_weight(self, weight: float) -> int:
        """SecAgg+'s ``q_ratio``: the weight as a share of ``max_weight``, in quantisation steps."""
        return round(min(weight, self.max_weight) / self.max_weight * self.quantization_range)


def reconstruction_threshold(share: float, members: int) -> int:
    """Shares (and surviving members) a group of ``members`` sites needs.

    SecAgg+'s float threshold ``round(share * n)``, at least 2 and more than half of the
    sites: then no two disjoint sets of sites can each rebuild a secret, so a server that
    asks some sites for a site's seed and others for its key cannot get both. Sites refuse
    a threshold of half or less.
    """
    return max(2, members // 2 + 1, round(share * members))


def common_values(config: Mapping[str, object]) -> dict[str, object]:
    """The values of a stage-2 record that every site of the round must receive alike.

    Quantisation (with ``max-weight``), the weight key, the caps table and every group's
    members; not the per-site ones (the site's own groups and cap, its forwarded shares).
    """
    keys = (
        CLIPPING_RANGE, QUANTIZATION_RANGE, MODULUS_RANGE, MAX_WEIGHT, WEIGHT_KEY, CAP_NODES,
        CAPS, ROUND_GROUPS,
    )  # fmt: skip
    common = {k: config[k] for k in keys}
    for group in config[ROUND_GROUPS]:  # type: ignore[attr-defined]
        common[GROUP_MEMBERS + str(group)] = config[GROUP_MEMBERS + str(group)]
    return common


def round_binding(peers: Sequence[int], threshold: int, common: Mapping[str, object]) -> bytes:
    """A digest of the round's public values: the peers, the threshold, ``common_values``.

    It goes into every pairwise mask (``pairwise_mask``): two sites that were told different
    values (a server giving one site another ``max-weight`` or caps table than the rest, to
    make its input outweigh the others') derive different masks, which do not cancel, so
    the "sum" the server unmasks is noise.
    """

    def plain(value: object) -> object:  # as both sides hold it, in JSON's types
        if isinstance(value, bool | str | int | float):
            return value
        return [plain(v) for v in value]  # type: ignore[attr-defined]

    values = {
        "peers": [int(p) for p in peers],
        "threshold": int(threshold),
        **{k: plain(v) for k, v in common.items()},
    }
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).digest()


def check_common(common: Mapping[str, object]) -> Quantization:
    """The quantisation of ``common_values``, if its values make sense; ValueError if not.

    Every cap positive and finite, ``max-weight`` the largest cap (a larger one would only
    shrink every site's weight towards zero), a known weight key, one cap per site.
    """
    quant = Quantization.from_config(common)
    nodes = [int(n) for n in common[CAP_NODES]]  # type: ignore[attr-defined]
    caps = [float(c) for c in common[CAPS]]  # type: ignore[attr-defined]
    if str(common[WEIGHT_KEY]) not in WEIGHT_KEYS:
        raise ValueError(f"weight key {common[WEIGHT_KEY]!r} is none of {WEIGHT_KEYS}")
    if len(nodes) != len(caps) or len(set(nodes)) != len(nodes) or not nodes:
        raise ValueError("the caps table must give one cap per site")
    if not all(math.isfinite(c) and c > 0 for c in caps):
        raise ValueError(f"every weight cap must be positive and finite, got {caps}")
    if quant.max_weight != max(caps):
        raise ValueError(f"max-weight {quant.max_weight} is not the largest weight cap {max(caps)}")
    if not (
        math.isfinite(quant.clipping_range)
        and quant.clipping_range > 0
        and 2 <= quant.quantization_range < quant.modulus_range <= DEFAULT_MODULUS_RANGE
        and quant.modulus_range & (quant.modulus_range - 1) == 0
    ):
        raise ValueError("the quantisation settings are out of range")
    return quant


def weight_key(group: str) -> str:
    return f"{WEIGHT_PREFIX}{group}"


def group_keys(keys: Iterable[str]) -> dict[str, list[str]]:
    """The keys of each parameter group, in the given order."""
    grouped: dict[str, list[str]] = {}
    for key in keys:
        grouped.setdefault(contract.group_of(key), []).append(key)
    return grouped


def masked_keys(keys: Sequence[str], groups: Iterable[str]) -> list[str]:
    """The keys of a masked reply: each group's weight, then its arrays, group by group."""
    by_group = group_keys(keys)
    return [k for g in groups for k in (weight_key(g), *by_group[g])]


def derive_seed(secret: bytes, group: str, binding: bytes = b"") -> bytes:
    """A group's own 32-byte seed from a site's secret (HKDF-SHA256, group name as info).

    One self-mask seed and one pair key per site per round serve every group; without this
    the groups' masks would be equal, and subtracting two masked groups would unmask them.
    ``binding`` (``round_binding``) ties pairwise masks to the round's public values.
    """
    info = f"umedpt-fl secagg group {group}".encode() + binding
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def mask_stream(seed: bytes, modulus: int, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Uniform integers in ``[0, modulus)`` of ``shapes``, expanded from a 32-byte seed.

    The keystream of AES-256 in counter mode (the ``cryptography`` package), read as
    little-endian uint32 words. Not Flower's ``secaggplus_utils.pseudo_rand_gen``: it seeds
    NumPy's ``RandomState`` with a 32-bit fold of the seed, so a mask could be found by
    trying 2**32 seeds. ``modulus`` is a power of two <= 2**32, so the words stay uniform.
    """
    if len(seed) != 32:
        raise ValueError(f"a mask seed has 32 bytes, got {len(seed)}")
    if modulus > 2**32 or modulus & (modulus - 1):
        raise ValueError(f"the modulus must be a power of two <= 2**32, got {modulus}")
    sizes = [int(np.prod(shape)) for shape in shapes]
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    words = np.frombuffer(encryptor.update(bytes(4 * sum(sizes))), dtype="<u4")
    words = words.astype(np.int64) % modulus
    out, start = [], 0
    for shape, size in zip(shapes, sizes):
        out.append(words[start : start + size].reshape(shape))
        start += size
    return out


def self_mask(seed: bytes, group: str, shapes: list[tuple[int, ...]], modulus: int) -> list:
    """A site's own mask of one group (removed with its seed, rebuilt from shares)."""
    return mask_stream(derive_seed(seed, group), modulus, shapes)


def pairwise_mask(
    private_key: bytes,
    peer_public_key: bytes,
    group: str,
    shapes: list[tuple[int, ...]],
    modulus: int,
    binding: bytes,
) -> list:
    """The mask two sites share in one group (ECDH key agreement, then the group's seed),
    bound to the round's public values (``round_binding``): it cancels only between two
    sites that were told the same values."""
    shared = generate_shared_key(
        bytes_to_private_key(private_key), bytes_to_public_key(peer_public_key)
    )
    return mask_stream(derive_seed(shared, group, binding), modulus, shapes)


def apply_pairwise(vectors: list, mask: list, *, own: int, peer: int, remove: bool = False) -> list:
    """Add (``own > peer``) or subtract the pair's mask, as SecAgg+ does; ``remove`` undoes it."""
    add = (own > peer) != remove
    return parameters_addition(vectors, mask) if add else parameters_subtraction(vectors, mask)


def reduce_mod(vectors: list, modulus: int) -> list:
    return parameters_mod(vectors, modulus)
