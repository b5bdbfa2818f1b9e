"""Secure aggregation per parameter group: the server's side of SecAgg+ on the Message API.

MIRRORS ``flwr/server/workflow/secure_aggregation/secaggplus_workflow.py`` (Flower 1.42.0):
setup (collect public keys), share keys (forward encrypted Shamir shares), collect masked
vectors (the round's train messages), unmask (collect shares, rebuild the self-mask seeds
of the sites that sent input and the mask keys of those that did not, remove the masks).
Differences, on purpose:

- per group: each group is a sum over the sites that train it (the encoder over all);
  pairwise masks only join members of one group, so the server can unmask a group from
  its members' inputs alone. Shares of a site's secrets go to every site of the round
  (they all share the encoder) with one threshold ``T = max(2, n // 2 + 1, round(t * n))``;
- a group is summed only when ``reconstruction_threshold(t, members)`` of its members sent
  input; otherwise it keeps its weights (the encoder failing fails the round);
- a group trained by a single site cannot be hidden in a sum: refused
  (``SecureAggregationError``) unless ``allow_unshared_blocks``, which leaves that group out
  of the aggregate (it keeps its weights; the site still trains on it);
- the weights: equal (``SecureAggregation.weights``), never from what sites claim about
  themselves; the unmasked total weight must equal the sum of the weights the sites report
  (in clear, with their metrics), or the group is rejected;
- every site gets the same caps table and every group's members, and its pairwise masks
  are bound to them (``secagg.round_binding``); the sites check the threshold, caps and
  weights themselves (``client/secagg.py``).

``SecureAggregation`` wraps a linear rule (:mod:`strategies.wrapper`): its
``configure_train`` runs stages 0-1 around the rule's train messages (which become stage
2's), and its ``aggregate_train`` runs the rule's own with stage 3 and the per-group
reduction of the unmasked sums in place of the plain reduction (``combining_with``), so
FedAdam's server step still runs after it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_extract,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.quantization import dequantize
from flwr.serverapp import Grid

from federation import secagg, wire
from strategies.aggregation import reduce_by_group
from strategies.base import GroupedStrategy
from strategies.records import RoundFailedError, arrays_nbytes
from strategies.wrapper import StrategyWrapper, require_linear
from umedpt import contract


class SecureAggregationError(RuntimeError):
    """Secure aggregation cannot run as configured; the message says what to change."""


@dataclass(frozen=True)
class SecAggConfig:
    """Secure-aggregation settings (run config ``secagg-*``), checked once."""

    reconstruction_threshold: float = 0.66  # share of a group's sites needed to unmask it
    clipping_range: float = 8.0
    quantization_range: int = 4194304
    modulus_range: int = secagg.DEFAULT_MODULUS_RANGE
    allow_unshared_blocks: bool = False  # leave single-site groups out instead of refusing

    def __post_init__(self) -> None:
        if not 0 < self.reconstruction_threshold <= 1:
            raise ValueError("reconstruction_threshold must be in (0, 1]")
        if self.modulus_range > 2**32 or bin(self.modulus_range).count("1") != 1:
            raise ValueError("modulus_range must be a power of two <= 2**32")
        if not 2 <= self.quantization_range < self.modulus_range:
            raise ValueError("quantization_range must be in [2, modulus_range)")
        if self.clipping_range <= 0:
            raise ValueError("clipping_range must be positive")


def check_rule(rule: GroupedStrategy) -> None:
    """Refuse what needs single updates, which secure aggregation hides from the server.

    A ``reduce_group`` other than the weighted mean (median, trimmed mean), update-norm
    bounds and a cap on one site's share (they need each site's update or its share of a
    sum) all look at single replies; weighting by example counts takes each site's word
    (or the server's) for its weight. ValueError saying which.
    """
    require_linear(rule, "secure aggregation", "the server only sees sums of updates")
    policy = rule.policy
    if not policy.equal_weights or rule.weighted_by_key != wire.UNIT_WEIGHT:
        raise ValueError(
            "secure aggregation weighs every site equally: example counts are each site's "
            "own claim, and one inflated claim would outweigh every other site"
        )
    if policy.norm_bound > 0 or policy.norm_ratio > 0:
        raise ValueError(
            "secure aggregation hides single updates, but the update-norm bounds check each "
            "site's change"
        )
    if policy.max_site_share < 1 and not policy.equal_weights:
        raise ValueError(
            "secure aggregation hides single updates, but a cap on one site's share "
            "reweights single sites after training"
        )


@dataclass
class RoundProtocol:
    """The server's state of one round's protocol."""

    server_round: int
    threshold: int  # Shamir threshold of every site's secrets
    quant: secagg.Quantization
    sampled: dict[str, list[int]]  # group -> members when the round started
    members: dict[str, list[int]] = field(default_factory=dict)  # after share keys
    public_keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    caps: dict[int, float] = field(default_factory=dict)
    expected_keys: dict[int, list[str]] = field(default_factory=dict)
    excluded: dict[str, int] = field(default_factory=dict)  # single-site groups left out
    binding: bytes = b""  # digest of the values every site got alike (round_binding)
    grid: Grid | None = None


def _replies_by_node(replies: Iterable[Message], sent: Sequence[Message]) -> dict[int, Message]:
    """Replies keyed by the node that was asked (not their source: see replying_node)."""
    asked = {m.metadata.message_id: m.metadata.dst_node_id for m in sent}
    asked.pop("", None)
    return {asked.get(r.metadata.reply_to_message_id, r.metadata.src_node_id): r for r in replies}


def _stage(
    grid: Grid, kind: str, records: dict[int, dict], timeout: float
) -> dict[int, ConfigRecord]:
    """Send one protocol stage's values to each node; the usable answers by node."""
    sent = [
        Message(RecordDict({secagg.RECORD: ConfigRecord(values)}), message_type=kind, dst_node_id=n)
        for n, values in records.items()
    ]
    answers = {}
    for node, reply in _replies_by_node(grid.send_and_receive(sent, timeout=timeout), sent).items():
        if reply.has_error() or secagg.RECORD not in reply.content:
            reason = reply.error.reason if reply.has_error() else "no protocol record"
            log(WARNING, "secure aggregation %s: node %s failed: %s", kind, node, reason)
            continue
        answers[node] = reply.content[secagg.RECORD]
    return answers


class SecureAggregation(StrategyWrapper):
    """A linear rule whose train rounds run SecAgg+ per group; see the module docstring."""

    def __init__(self, rule: GroupedStrategy, config: SecAggConfig) -> None:
        if not isinstance(rule, GroupedStrategy):
            raise TypeError(f"secure aggregation wraps a GroupedStrategy, got {type(rule)}")
        check_rule(rule)
        super().__init__(rule)
        self.config = config
        self.round: RoundProtocol | None = None

    # -- Flower's hooks -------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """The rule's train messages, sent as stage 2 after stages 0-1 (keys, shares)."""
        messages = list(self.rule.configure_train(server_round, arrays, config, grid))
        return self._configure(server_round, messages, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The rule's aggregation, over the unmasked per-group sums instead of single updates."""
        with self.rule.combining_with(self._aggregate):
            return self.rule.aggregate_train(server_round, replies)

    # -- stages 0 and 1, and the messages of stage 2 ----------------------------------
    def _configure(self, server_round: int, messages: list[Message], grid: Grid) -> list[Message]:
        """Advertise and share keys with the sites of ``messages``; their masked-train messages."""
        st = self.rule
        payload_keys = {
            m.metadata.dst_node_id: list(m.content[st.arrayrecord_key].keys()) for m in messages
        }
        sampled: dict[str, list[int]] = {}
        for node, keys in sorted(payload_keys.items()):
            for group in secagg.group_keys(keys):
                sampled.setdefault(group, []).append(node)
        excluded = self._single_site_groups(sampled)
        for group in excluded:
            del sampled[group]
        threshold = secagg.reconstruction_threshold(
            self.config.reconstruction_threshold, len(payload_keys)
        )
        max_weight, caps = self.weights(server_round, list(payload_keys))
        proto = self.round = RoundProtocol(
            server_round,
            threshold,
            secagg.Quantization(
                self.config.clipping_range,
                self.config.quantization_range,
                self.config.modulus_range,
                max_weight,
            ),
            sampled,
            caps=caps,
            excluded=excluded,
            grid=grid,
        )
        timeout = st.query_timeout
        # Stage 0: setup, every site advertises its two public keys.
        keys = _stage(grid, secagg.SETUP_TYPE, {n: {} for n in payload_keys}, timeout)
        proto.public_keys = {
            n: (cast(bytes, r[secagg.PUBLIC_KEY_1]), cast(bytes, r[secagg.PUBLIC_KEY_2]))
            for n, r in keys.items()
        }
        self._require(sorted(proto.public_keys), "setup")
        # Stage 1: share keys, each site's shares encrypted for every other site.
        peers = sorted(proto.public_keys)
        listing = {
            secagg.PEERS: peers,
            secagg.PEER_PK1: [proto.public_keys[n][0] for n in peers],
            secagg.PEER_PK2: [proto.public_keys[n][1] for n in peers],
            secagg.THRESHOLD: threshold,
        }
        shared = _stage(grid, secagg.SHARE_KEYS_TYPE, {n: listing for n in peers}, timeout)
        active = sorted(shared)
        self._require(active, "share keys")
        forward: dict[int, list[tuple[int, bytes]]] = {n: [] for n in active}
        for src, answer in shared.items():
            dsts = cast(list, answer[secagg.DESTINATIONS])
            for dst, ciphertext in zip(dsts, cast(list, answer[secagg.CIPHERTEXTS]), strict=True):
                if int(dst) in forward:
                    forward[int(dst)].append((src, cast(bytes, ciphertext)))
        proto.members = {g: [n for n in ms if n in shared] for g, ms in sampled.items()}
        for group, members in list(proto.members.items()):
            if len(members) < 2:  # its other sites dropped during key sharing
                del proto.members[group]
                if members:
                    excluded[group] = members[0]
                log(
                    WARNING,
                    "secure aggregation: group '%s' has %s left after key sharing: a sum of "
                    "one update is that update, so it keeps its weights this round",
                    group,
                    f"only site '{st.site_name(members[0])}'" if members else "no site",
                )
        for node in sorted(set(payload_keys) - set(shared)):
            self._drop(node, "secure aggregation: no keys shared before training")
        # What every site of stage 2 gets alike; its pairwise masks are bound to it.
        common = {
            **proto.quant.to_config(),
            secagg.WEIGHT_KEY: st.weighted_by_key,
            secagg.CAP_NODES: active,
            secagg.CAPS: [float(caps[n]) for n in active],
            secagg.ROUND_GROUPS: sorted(proto.members),
            **{secagg.GROUP_MEMBERS + g: ms for g, ms in sorted(proto.members.items())},
        }
        proto.binding = secagg.round_binding(peers, threshold, common)
        # Stage 2's messages: the round's train content plus the forwarded shares.
        out = []
        for message in messages:
            node = message.metadata.dst_node_id
            if node not in shared:
                continue
            groups = [g for g in secagg.group_keys(payload_keys[node]) if g not in excluded]
            proto.expected_keys[node] = secagg.masked_keys(payload_keys[node], groups)
            record = {
                secagg.SOURCES: [s for s, _ in forward[node]],
                secagg.CIPHERTEXTS: [c for _, c in forward[node]],
                secagg.GROUPS: groups,
                secagg.WEIGHT_CAP: float(caps[node]),
                **common,
            }
            content = RecordDict(dict(message.content.items()))
            content[secagg.RECORD] = ConfigRecord(record)  # type: ignore[arg-type]
            out.append(Message(content, message_type=secagg.COLLECT_TYPE, dst_node_id=node))
        st.track_sent(out)
        return out

    def _single_site_groups(self, sampled: dict[str, list[int]]) -> dict[str, int]:
        """Groups one site alone trains: refused, or (if allowed) left out with a warning."""
        single = {g: ms[0] for g, ms in sampled.items() if len(ms) < 2}
        for group, node in single.items():
            name = self.rule.site_name(node)
            if not self.config.allow_unshared_blocks:
                raise SecureAggregationError(
                    f"group '{group}' is trained only by site '{name}' in this round: a sum "
                    "of one update is that update. Add sites that train it, or allow "
                    "unshared blocks (they are then left out of the aggregate)"
                )
            log(
                WARNING,
                "secure aggregation: group '%s' is trained only by site '%s': left out of "
                "the aggregate, it keeps its weights",
                group,
                name,
            )
        return single

    def weights(self, server_round: int, nodes: list[int]) -> tuple[float, dict[int, float]]:
        """``max_weight`` of the round and each site's weight cap: 1 and 1 (equal weights).

        A site scales its values by ``weight / max_weight`` before masking, and the unmasked
        total weight must equal the sum of the weights the sites report. Nothing a site
        says about itself (its join-time ``examples-per-step``, its reported counts) enters
        here: one inflated claim would round every other site's weight to zero. The sites
        check what they get (a cap below their weight, a weight that quantises to zero:
        refused), so a server cannot weigh one site's input over the others' either.
        """
        return 1.0, dict.fromkeys(nodes, 1.0)

    def _require(self, active: list[int], stage: str) -> None:
        if self.round is not None and len(active) < self.round.threshold:
            raise RoundFailedError(
                f"round {self.round.server_round}: secure aggregation {stage}: {len(active)} "
                f"sites answered, fewer than the threshold of {self.round.threshold}"
            )

    def _drop(self, node: int, reason: str) -> None:
        st = self.rule
        assert self.round is not None
        st.round_record(self.round.server_round).rejected.append((st.site_name(node), reason))
        log(WARNING, "round %s: site %s: %s", self.round.server_round, st.site_name(node), reason)
        st.forget_payload(node)

    # -- stage 3 and the reduction -----------------------------------------------------
    def _aggregate(
        self, server_round: int, replies: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Unmask each group's sum of the masked replies and reduce it into new global arrays."""
        st, proto = self.rule, self.round
        if proto is None or proto.grid is None:
            raise RuntimeError("aggregate_train called before configure_train")
        record = st.round_record(server_round)
        masked: dict[int, Message] = {}
        answered = set()
        for reply in sorted(replies, key=st.reply_order):  # one order, whatever the arrival
            node = st.replying_node(reply)
            answered.add(node)
            if problem := self._reply_problem(node, reply):
                self._drop(node, f"training: {problem}")
                continue
            masked[node] = reply
        for node in sorted(set(proto.expected_keys) - answered):
            self._drop(node, "training: no reply before the round timeout")
        active, dead = sorted(masked), sorted(set(proto.expected_keys) - set(masked))
        for node, reply in masked.items():
            site = st.site_name(node)
            claim = float(reply.content[wire.METRICS][st.weighted_by_key])
            record.weights[site] = min(claim, proto.caps[node])
            st.note_weight(node, min(claim, proto.caps[node]))  # its first becomes its cap
            record.bytes_received[site] = arrays_nbytes(reply.content[wire.SHARED_ARRAYS])
            record.train_metrics[site] = {
                k: float(v)
                for k, v in reply.content[wire.METRICS].items()
                if isinstance(v, int | float)
            }
        if len(active) < max(proto.threshold, st.min_replies):
            log(
                WARNING,
                "round %s: %d sites sent masked input; secure aggregation needs %d and the "
                "round %d: weights kept",
                server_round,
                len(active),
                proto.threshold,
                st.min_replies,
            )
            return None, None
        lonely = {
            group: alive[0]
            for group, members in proto.members.items()
            if len(alive := [n for n in members if n in masked]) == 1
        }
        if lonely:
            # The seeds and dropped keys unmasking needs would reveal that one input of the
            # group in clear (a site's secrets serve all of its groups): unmask nothing.
            log(
                WARNING,
                "round %s: in group(s) %s only one site sent input; unmasking would reveal it: "
                "weights kept",
                server_round,
                ", ".join(f"'{g}' ({st.site_name(n)})" for g, n in lonely.items()),
            )
            return None, None
        # Stage 3: unmask. Seeds of the sites that sent input, keys of those that did not.
        request = {secagg.ACTIVE: active, secagg.DEAD: dead}
        answers = _stage(
            proto.grid, secagg.UNMASK_TYPE, {n: request for n in active}, st.query_timeout
        )
        shares: dict[int, list[bytes]] = {}
        for answer in answers.values():
            owners = cast(list, answer.get(secagg.SHARE_OWNERS, []))
            for owner, share in zip(owners, cast(list, answer.get(secagg.SHARES, [])), strict=True):
                shares.setdefault(int(owner), []).append(cast(bytes, share))
        secrets = {n: combine_shares(s) for n, s in shares.items() if len(s) >= proto.threshold}
        # Each group's mean, as one contribution of the group's total weight: the
        # strategy's per-group path (reduce_group = weighted mean) turns it into the arrays.
        contributions = {
            group: result
            for group, members in proto.members.items()
            if (result := self._unmask_group(group, members, masked, secrets)) is not None
        }
        if contract.ENCODER not in contributions:
            log(WARNING, "round %s: the encoder could not be unmasked: weights kept", server_round)
            return None, None
        arrays, updated = reduce_by_group(
            st.global_arrays, list(contributions.values()), st.reduce_group
        )
        record.updated_groups.extend(updated)
        key = st.weighted_by_key  # metrics weighed by the server's weights, not the claims
        metrics = st.train_metrics_aggr_fn(
            [
                RecordDict(
                    {
                        wire.METRICS: MetricRecord(
                            {**r.content[wire.METRICS], key: record.weights[st.site_name(n)]}
                        )
                    }
                )
                for n, r in masked.items()
            ],
            key,
        )
        log(INFO, "round %s: securely aggregated groups %s", server_round, updated)
        return arrays, metrics

    def _reply_problem(self, node: int, reply: Message) -> str | None:
        """Why a masked reply cannot be summed (None if it can): the checks that still run."""
        assert self.round is not None
        if reply.has_error():
            return f"the site failed: {reply.error.reason}"
        if node not in self.round.expected_keys:
            return "this site was not asked to train in this round"
        content = reply.content
        if wire.METRICS not in content or wire.SHARED_ARRAYS not in content:
            return "the reply lacks its metrics or its masked arrays"
        weight = content[wire.METRICS].get(self.rule.weighted_by_key)
        if not isinstance(weight, int | float) or not math.isfinite(weight) or weight < 0:
            return f"weight {weight!r} is not a finite, non-negative number"
        arrays = content[wire.SHARED_ARRAYS]
        expected = self.round.expected_keys[node]
        if list(arrays.keys()) != expected:
            return f"masked keys differ from those expected ({len(arrays)} vs {len(expected)})"
        reference = self.rule.global_arrays
        for key, value in arrays.items():
            shape = (1,) if key.startswith(secagg.WEIGHT_PREFIX) else tuple(reference[key].shape)
            if tuple(value.shape) != shape or np.dtype(value.dtype) != secagg.MASKED_DTYPE:
                return f"'{key}' is {value.dtype}{list(value.shape)}, expected uint32{list(shape)}"
        return None

    def _unmask_group(
        self,
        group: str,
        members: list[int],
        masked: dict[int, Message],
        secrets: dict[int, bytes],
    ) -> tuple[ArrayRecord, float] | None:
        """One group's weighted mean and total weight, or None (logged) if it cannot be had."""
        proto, st = self.round, self.rule
        assert proto is not None
        quant = proto.quant
        active = [n for n in members if n in masked]
        dead = [n for n in members if n not in masked]
        needed = secagg.reconstruction_threshold(
            self.config.reconstruction_threshold, len(proto.sampled[group])
        )
        missing = [n for n in members if n not in secrets]
        if len(active) < needed or missing:
            log(
                WARNING,
                "group '%s': %d of %d sites sent input (needed %d), secrets of nodes %s not "
                "recovered: not aggregated",
                group,
                len(active),
                len(proto.sampled[group]),
                needed,
                missing,
            )
            return None
        keys = [secagg.weight_key(group), *secagg.group_keys(st.global_arrays.keys())[group]]
        vectors = [
            sum(masked[n].content[wire.SHARED_ARRAYS][k].numpy().astype(np.int64) for n in active)
            for k in keys
        ]
        shapes = [v.shape for v in vectors]
        for node in active:  # self masks
            vectors = parameters_subtraction(
                vectors, secagg.self_mask(secrets[node], group, shapes, quant.modulus_range)
            )
        for node in dead:  # the dropped sites' pairwise masks, from their rebuilt key
            for peer in active:
                mask = secagg.pairwise_mask(
                    secrets[node],
                    proto.public_keys[peer][0],
                    group,
                    shapes,
                    quant.modulus_range,
                    proto.binding,
                )
                vectors = secagg.apply_pairwise(vectors, mask, own=peer, peer=node, remove=True)
        q_total, values = factor_extract(secagg.reduce_mod(vectors, quant.modulus_range))
        q_total = int(np.asarray(q_total))
        expected = sum(
            quant.quantized_weight(
                min(float(masked[n].content[wire.METRICS][st.weighted_by_key]), proto.caps[n])
            )
            for n in active
        )
        if q_total != expected or q_total == 0:
            for node in active:
                st.round_record(proto.server_round).rejected.append(
                    (st.site_name(node), f"training: group '{group}' sum rejected")
                )
            log(
                WARNING,
                "group '%s': the masked weights sum to %d, the reported ones to %d: a site "
                "lied about its weight; not aggregated",
                group,
                q_total,
                expected,
            )
            return None
        means = dequantize(values, quant.clipping_range, quant.quantization_range)
        offset = -(len(active) - 1) * quant.clipping_range
        scale = quant.quantization_range / q_total
        means = [(v + offset) * scale for v in means]
        if st.codec.sends_change:  # under a lossy codec the sites masked their CHANGE from
            # the weights they were sent: added to the float32 global here, so no rounding of
            # the 16-bit downlink ever enters the global weights
            reference = st.global_numpy()
            means = [reference[k] + v for k, v in zip(keys[1:], means, strict=True)]
        arrays = {k: Array(np.asarray(v)) for k, v in zip(keys[1:], means, strict=True)}
        return ArrayRecord(arrays), q_total / quant.quantization_range * quant.max_weight
