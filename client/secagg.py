"""The site's side of secure aggregation per group: SecAgg+'s four client stages.

MIRRORS ``flwr/client/mod/secure_aggregation/secaggplus_mod.py`` (Flower 1.42.0) stage by
stage (setup, share keys, collect masked vectors, unmask), with two differences: the stages
are named message types routed by the ClientApp (``register``), not a mod around the legacy
fit, and the masking is per parameter group (pairwise masks only with the sites that share
the group, seeds derived per group: :func:`federation.secagg.derive_seed`). The protocol state
lives in ``context.state`` between the stages of one round, as in Flower's mod.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from logging import WARNING
from typing import Any, Protocol, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log
from flwr.common.secure_aggregation.crypto.shamir import create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    decrypt,
    encrypt,
    generate_shared_key,
)
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_combine,
    parameters_addition,
    parameters_multiply,
)
from flwr.common.secure_aggregation.quantization import quantize
from flwr.common.secure_aggregation.secaggplus_utils import (
    share_keys_plaintext_concat,
    share_keys_plaintext_separate,
)
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)

from federation import secagg, wire

STATE = "secagg-state"  # ConfigRecord in context.state: this round's keys and shares


class SentLogger(Protocol):
    """What stage 2 needs of a trained reply: to log the reply as it finally leaves."""

    def log_as_sent(self, sent: Message, context: Context) -> Message: ...


# The site's training: the plain reply (or an error reply) and its logger.
TrainReply = Callable[[Message, Context], tuple[Message, SentLogger]]


class SecAggError(RuntimeError):
    """The server asked for a stage out of order or with values that break the protocol."""


@dataclass
class SiteSecrets:
    """One round's protocol state of this site (SecAgg+'s ``SecAggPlusState``)."""

    stage: str = secagg.UNMASK  # the last stage done; a round starts with SETUP
    nid: int = 0
    sk1: bytes = b""
    pk1: bytes = b""
    sk2: bytes = b""
    pk2: bytes = b""
    threshold: int = 0
    seed: bytes = b""  # self-mask seed
    peers: list[int] = field(default_factory=list)
    peer_pk1: list[bytes] = field(default_factory=list)
    peer_pk2: list[bytes] = field(default_factory=list)
    owners: list[int] = field(default_factory=list)  # whose shares this site holds
    seed_shares: list[bytes] = field(default_factory=list)
    sk1_shares: list[bytes] = field(default_factory=list)
    # "group:node,node,...": the groups this site masked and their members, so that it can
    # refuse an unmasking that would leave one member's input alone in a group's sum.
    masked_groups: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, context: Context) -> SiteSecrets:
        record = context.state.config_records.get(STATE)
        if record is None:
            return cls()
        return cls(**{k: (list(v) if isinstance(v, list) else v) for k, v in record.items()})

    def save(self, context: Context) -> None:
        values = {k: v for k, v in self.__dict__.items() if not isinstance(v, list) or v}
        context.state.config_records[STATE] = ConfigRecord(values)  # type: ignore[arg-type]

    def expect(self, done: str, stage: str) -> None:
        if self.stage != done:
            raise SecAggError(f"secure aggregation: stage {stage} asked after {self.stage}")

    def peer_key(self, node: int, *, encryption: bool = False) -> bytes:
        keys = self.peer_pk2 if encryption else self.peer_pk1
        return keys[self.peers.index(node)]


def _reply(message: Message, values: dict[str, Any]) -> Message:
    return Message(RecordDict({secagg.RECORD: ConfigRecord(values)}), reply_to=message)


def setup(message: Message, context: Context) -> Message:
    """Stage 0: a fresh pair of key pairs for this round; advertise the public halves."""
    sk1, pk1 = generate_key_pairs()
    sk2, pk2 = generate_key_pairs()
    state = SiteSecrets(
        stage=secagg.SETUP,
        nid=message.metadata.dst_node_id,
        sk1=private_key_to_bytes(sk1),
        pk1=public_key_to_bytes(pk1),
        sk2=private_key_to_bytes(sk2),
        pk2=public_key_to_bytes(pk2),
    )
    state.save(context)
    return _reply(message, {secagg.PUBLIC_KEY_1: state.pk1, secagg.PUBLIC_KEY_2: state.pk2})


def share_keys(message: Message, context: Context) -> Message:
    """Stage 1: Shamir shares of the self-mask seed and of sk1, encrypted for each peer."""
    state = SiteSecrets.load(context)
    state.expect(secagg.SETUP, secagg.SHARE_KEYS)
    config = message.content[secagg.RECORD]
    peers = [int(n) for n in cast(list, config[secagg.PEERS])]
    pk1s = list(cast(list, config[secagg.PEER_PK1]))
    pk2s = list(cast(list, config[secagg.PEER_PK2]))
    state.threshold = int(cast(int, config[secagg.THRESHOLD]))
    if len(peers) < state.threshold or state.threshold < 2:
        raise SecAggError(f"{len(peers)} peers cannot reach the threshold {state.threshold}")
    if len(set(pk1s + pk2s)) != 2 * len(peers):
        raise SecAggError("some public keys are identical")
    own = peers.index(state.nid)
    if (pk1s[own], pk2s[own]) != (state.pk1, state.pk2):
        raise SecAggError("the server listed other public keys for this site")
    state.peers, state.peer_pk1, state.peer_pk2 = peers, pk1s, pk2s
    state.seed = os.urandom(32)
    seed_shares = create_shares(state.seed, state.threshold, len(peers))
    sk1_shares = create_shares(state.sk1, state.threshold, len(peers))
    destinations, ciphertexts = [], []
    sk2 = bytes_to_private_key(state.sk2)
    for idx, (peer, pk2) in enumerate(zip(peers, pk2s, strict=True)):
        if peer == state.nid:
            state.owners = [peer]
            state.seed_shares, state.sk1_shares = [seed_shares[idx]], [sk1_shares[idx]]
            continue
        key = generate_shared_key(sk2, bytes_to_public_key(pk2))
        plain = share_keys_plaintext_concat(state.nid, peer, seed_shares[idx], sk1_shares[idx])
        destinations.append(peer)
        ciphertexts.append(encrypt(key, plain))
    state.stage = secagg.SHARE_KEYS
    state.save(context)
    return _reply(message, {secagg.DESTINATIONS: destinations, secagg.CIPHERTEXTS: ciphertexts})


def _store_shares(state: SiteSecrets, config: ConfigRecord) -> set[int]:
    """Decrypt the peers' shares forwarded by the server; the peers they came from."""
    sk2 = bytes_to_private_key(state.sk2)
    sources = [int(s) for s in cast(list, config.get(secagg.SOURCES, []))]
    ciphertexts = list(cast(list, config.get(secagg.CIPHERTEXTS, [])))
    for src, ciphertext in zip(sources, ciphertexts, strict=True):
        key = generate_shared_key(sk2, bytes_to_public_key(state.peer_key(src, encryption=True)))
        actual, dst, seed_share, sk1_share = share_keys_plaintext_separate(decrypt(key, ciphertext))
        if actual != src or dst != state.nid:
            raise SecAggError(
                f"a share from node {actual} to {dst} arrived as {src} -> {state.nid}"
            )
        state.owners.append(src)
        state.seed_shares.append(seed_share)
        state.sk1_shares.append(sk1_share)
    return set(sources)


def masked_reply(message: Message, context: Context, trained: Message) -> Message:
    """Stage 2: ``trained`` (the site's plain train reply) with its arrays masked per group.

    Each group's vector is SecAgg+'s: ``[quantised weight] + quantised(arrays * weight /
    max_weight)``, plus this site's self mask and the pairwise masks with the group's
    other members, modulo the modulus. The metrics travel as they are.
    """
    state = SiteSecrets.load(context)
    state.expect(secagg.SHARE_KEYS, secagg.COLLECT)
    config = message.content[secagg.RECORD]
    sources = _store_shares(state, config)
    state.stage = secagg.COLLECT
    state.save(context)
    if trained.has_error():
        return trained
    quant = secagg.Quantization.from_config(config)
    metrics = trained.content[wire.METRICS]
    weight = float(cast(float, metrics[str(config[secagg.WEIGHT_KEY])]))
    cap = float(cast(float, config[secagg.WEIGHT_CAP]))
    if weight > cap:
        log(WARNING, "secure aggregation: weight %s clipped at %s", weight, cap)
    q_ratio = quant.quantized_weight(min(weight, cap))
    arrays = trained.content[wire.SHARED_ARRAYS]
    by_group = secagg.group_keys(arrays.keys())
    masked: dict[str, Array] = {}
    for group in [str(g) for g in cast(list, config[secagg.GROUPS])]:
        members = [int(n) for n in cast(list, config[secagg.GROUP_MEMBERS + group])]
        if state.nid not in members or len(set(members)) < 2:
            raise SecAggError(
                f"group {group}: the server listed members {members}; a sum hides this "
                "site's input only with this site and at least one other in it"
            )
        state.masked_groups.append(f"{group}:{','.join(str(n) for n in members)}")
        keys = by_group[group]
        values = [arrays[k].numpy().astype(np.float64) for k in keys]
        values = parameters_multiply(values, q_ratio / quant.quantization_range)
        vectors = factor_combine(
            q_ratio, quantize(values, quant.clipping_range, quant.quantization_range)
        )
        shapes = [v.shape for v in vectors]
        vectors = parameters_addition(
            vectors, secagg.self_mask(state.seed, group, shapes, quant.modulus_range)
        )
        for peer in members:
            if peer == state.nid:
                continue
            if peer not in sources:
                raise SecAggError(f"group {group}: no shares came from member node {peer}")
            mask = secagg.pairwise_mask(
                state.sk1, state.peer_key(peer), group, shapes, quant.modulus_range
            )
            vectors = secagg.apply_pairwise(vectors, mask, own=state.nid, peer=peer)
        vectors = secagg.reduce_mod(vectors, quant.modulus_range)
        for key, vector in zip([secagg.weight_key(group), *keys], vectors, strict=True):
            masked[key] = Array(np.asarray(vector).astype(secagg.MASKED_DTYPE))
    state.save(context)
    content = RecordDict({wire.METRICS: metrics, wire.SHARED_ARRAYS: ArrayRecord(masked)})
    return Message(content, reply_to=message)


def unmask(message: Message, context: Context) -> Message:
    """Stage 3: seed shares of the sites that sent input, sk1 shares of those that did not.

    Never both for one site (that would unmask its input): the lists must be disjoint, and
    the secrets are forgotten afterwards.
    """
    state = SiteSecrets.load(context)
    state.expect(secagg.COLLECT, secagg.UNMASK)
    config = message.content[secagg.RECORD]
    active = [int(n) for n in cast(list, config.get(secagg.ACTIVE, []))]
    dead = [int(n) for n in cast(list, config.get(secagg.DEAD, []))]
    if set(active) & set(dead):
        raise SecAggError("a site is listed as both active and dropped")
    if len(active) < state.threshold:
        raise SecAggError(f"{len(active)} active sites, fewer than the threshold {state.threshold}")
    for entry in state.masked_groups:
        group, _, listed = entry.partition(":")
        alive = set(active) & {int(n) for n in listed.split(",")}
        if len(alive) == 1:
            # Its seed (asked for) and the dropped members' keys would unmask that one
            # input of this group in clear.
            SiteSecrets().save(context)
            raise SecAggError(
                f"group {group}: only node {alive.pop()} sent input; unmasking would reveal it"
            )
    owners, shares = [], []
    for node, pick in [(n, state.seed_shares) for n in active] + [
        (n, state.sk1_shares) for n in dead
    ]:
        if node in state.owners:
            owners.append(node)
            shares.append(pick[state.owners.index(node)])
    SiteSecrets().save(context)  # forget this round's secrets
    return _reply(message, {secagg.SHARE_OWNERS: owners, secagg.SHARES: shares})


def register(app: ClientApp, train_reply: TrainReply) -> None:
    """Route the four stages on ``app``; stage 2 runs ``train_reply`` and masks its reply."""

    @app.query(secagg.SETUP)
    def _setup(message: Message, context: Context) -> Message:
        return setup(message, context)

    @app.query(secagg.SHARE_KEYS)
    def _share_keys(message: Message, context: Context) -> Message:
        return share_keys(message, context)

    @app.train(secagg.COLLECT)
    def _collect(message: Message, context: Context) -> Message:
        # The stage first: a message out of order must not train (nor spend privacy budget).
        SiteSecrets.load(context).expect(secagg.SHARE_KEYS, secagg.COLLECT)
        reply, trained = train_reply(message, context)
        # Logged as it leaves: the masked arrays (or the error), not the plain update.
        return trained.log_as_sent(masked_reply(message, context, reply), context)

    @app.query(secagg.UNMASK)
    def _unmask(message: Message, context: Context) -> Message:
        return unmask(message, context)
