"""The site's side of secure aggregation per group: SecAgg+'s four client stages.

MIRRORS ``flwr/client/mod/secure_aggregation/secaggplus_mod.py`` (Flower 1.42.0) stage by
stage (setup, share keys, collect masked vectors, unmask), with two differences: the stages
are named message types routed by the ClientApp (``register``), not a mod around the legacy
fit, and the masking is per parameter group (pairwise masks only with the sites that share
the group, seeds derived per group: :func:`federation.secagg.derive_seed`). The protocol state
lives in ``context.state`` between the stages of one round, as in Flower's mod.

The site does not trust the server's parameters (docs/secure-aggregation.md): it refuses a
Shamir threshold of half its peers or less, a weight cap below its own weight, a zero
weight or one that quantises to zero, a ``max-weight`` above the largest cap, and shares
that would unmask a group (any group, its own or not) with one live member. A refusal
(:class:`SecAggError`) is an error reply, and the site forgets the round's secrets.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from logging import WARNING
from typing import Any, Protocol, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
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
from federation.reasons import Refusal

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
    # "group:node,node,...": every group of the round and its members, so that it can refuse
    # an unmasking that would leave one member's input alone in a group's sum (its shares
    # of that member's seed would help unmask it, whether or not this site is in the group).
    round_groups: list[str] = field(default_factory=list)

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
    if 2 * state.threshold <= len(peers):
        # Two disjoint sets of sites could each rebuild a secret: a server could ask one
        # for this site's seed and the other for its key, and unmask its input.
        raise SecAggError(
            f"threshold {state.threshold} is half of the {len(peers)} peers or less; "
            "more than half is needed"
        )
    if len(set(pk1s + pk2s)) != 2 * len(peers) or len(set(peers)) != len(peers):
        raise SecAggError("some peers or public keys are listed twice")
    if state.nid not in peers:
        raise SecAggError("the server did not list this site among the peers")
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


def _members(config: ConfigRecord, group: str) -> list[int]:
    try:
        return [int(n) for n in cast(list, config[secagg.GROUP_MEMBERS + group])]
    except KeyError:
        raise SecAggError(f"group {group}: the server did not list its members") from None


def check_round(state: SiteSecrets, config: ConfigRecord) -> tuple[secagg.Quantization, bytes]:
    """Stage 2's parameters, checked before training: the quantisation and the binding.

    This site's groups must have it and another member; every group of the round two
    members or more among the peers; the values all sites get alike (``common_values``)
    must make sense (``check_common``) and list this site's cap. SecAggError if not.
    """
    own_groups = [str(g) for g in cast(list, config[secagg.GROUPS])]
    for group in own_groups:
        members = _members(config, group)
        if state.nid not in members or len(set(members)) < 2:
            raise SecAggError(
                f"group {group}: the server listed members {members}; a sum hides this "
                "site's input only with this site and at least one other in it"
            )
    try:
        common = secagg.common_values(config)
    except KeyError as exc:
        raise SecAggError(f"the server did not send {exc.args[0]!r}") from None
    round_groups = [str(g) for g in cast(list, common[secagg.ROUND_GROUPS])]
    if missing := sorted(set(own_groups) - set(round_groups)):
        raise SecAggError(f"groups {missing} are not among the round's groups")
    for group in round_groups:
        members = _members(config, group)
        if len(set(members)) < 2 or not set(members) <= set(state.peers):
            raise SecAggError(
                f"group {group}: members {members} are not two or more of the round's sites"
            )
    try:
        quant = secagg.check_common(common)
    except ValueError as exc:
        raise SecAggError(str(exc)) from None
    nodes = [int(n) for n in cast(list, common[secagg.CAP_NODES])]
    if state.nid not in nodes:
        raise SecAggError("the caps table has no cap for this site")
    listed = float(cast(list, common[secagg.CAPS])[nodes.index(state.nid)])
    if listed != float(cast(float, config[secagg.WEIGHT_CAP])):
        raise SecAggError("this site's cap differs from its entry in the caps table")
    return quant, secagg.round_binding(state.peers, state.threshold, common)


def checked_weight(
    config: ConfigRecord, metrics: Any, quant: secagg.Quantization
) -> tuple[float, int]:
    """This site's weight and its quantised form; SecAggError unless both are above zero
    and the weight is within the cap the server set (a cap below it, e.g. 0 for every site
    but one, would make the sum that one site's input)."""
    key = str(config[secagg.WEIGHT_KEY])
    weight = metrics.get(key)
    if not isinstance(weight, int | float) or not math.isfinite(weight) or weight <= 0:
        raise SecAggError(f"weight {key}={weight!r}: this site sends no zero weight")
    cap = float(cast(float, config[secagg.WEIGHT_CAP]))
    if cap < weight:
        raise SecAggError(f"weight cap {cap} is below this site's weight {weight}")
    q_ratio = quant.quantized_weight(float(weight))
    if q_ratio <= 0:
        raise SecAggError(f"weight {weight} over max-weight {quant.max_weight} quantises to zero")
    return float(weight), q_ratio


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
    quant, binding = check_round(state, config)
    metrics = trained.content[wire.METRICS]
    _, q_ratio = checked_weight(config, metrics, quant)
    state.round_groups = [
        f"{group}:{','.join(str(n) for n in _members(config, group))}"
        for group in [str(g) for g in cast(list, config[secagg.ROUND_GROUPS])]
    ]
    arrays = trained.content[wire.SHARED_ARRAYS]
    by_group = secagg.group_keys(arrays.keys())
    masked: dict[str, Array] = {}
    for group in [str(g) for g in cast(list, config[secagg.GROUPS])]:
        members = _members(config, group)
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
                state.sk1, state.peer_key(peer), group, shapes, quant.modulus_range, binding
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
    for entry in state.round_groups:  # every group: this site holds shares of all members
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


def refusal(message: Message, context: Context, exc: SecAggError) -> Message:
    """The error reply of a refused stage; the round's secrets are forgotten.

    Its reason is the class and the why; the real ClientApp's ``client.refusals`` mod sends
    the class alone (the why is in the site's log).
    """
    SiteSecrets().save(context)
    log(WARNING, "secure aggregation refused: %s", exc)
    reason = f"{Refusal.SECURE_AGGREGATION_REFUSED.value}: {exc}"
    return Message(
        Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message
    )


def register(app: ClientApp, train_reply: TrainReply) -> None:
    """Route the four stages on ``app``; stage 2 runs ``train_reply`` and masks its reply.

    A stage the site refuses (SecAggError) answers with an error reply naming why.
    """

    def guarded(stage: Callable[[Message, Context], Message]):
        def handle(message: Message, context: Context) -> Message:
            try:
                return stage(message, context)
            except SecAggError as exc:
                return refusal(message, context, exc)

        return handle

    app.query(secagg.SETUP)(guarded(setup))
    app.query(secagg.SHARE_KEYS)(guarded(share_keys))
    app.query(secagg.UNMASK)(guarded(unmask))

    @app.train(secagg.COLLECT)
    def _collect(message: Message, context: Context) -> Message:
        # The stage and the round's parameters first: a message out of order or with
        # values this site refuses must not train (nor spend privacy budget).
        try:
            state = SiteSecrets.load(context)
            state.expect(secagg.SHARE_KEYS, secagg.COLLECT)
            check_round(state, message.content[secagg.RECORD])
        except SecAggError as exc:
            return refusal(message, context, exc)
        reply, trained = train_reply(message, context)
        try:
            sent = masked_reply(message, context, reply)
        except SecAggError as exc:
            sent = refusal(message, context, exc)
        # Logged as it leaves: the masked arrays (or the error), not the plain update.
        return trained.log_as_sent(sent, context)
