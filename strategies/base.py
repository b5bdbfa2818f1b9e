"""``GroupedStrategy``: Flower's FedAvg with aggregation per parameter group.

The server holds ``encoder.*`` and every ``blocks.<b>.*``. Each site is sent only the
encoder and the blocks its tasks use (it says which when first asked, by a query
message; :mod:`strategies.sites`), and must send back exactly those keys
(:mod:`strategies.validation`). ``encoder.*`` is reduced over all accepted replies,
each ``blocks.<b>.*`` over the replies that carry it (:mod:`strategies.aggregation`).
Heads never travel.

Every reply's weight is decided here (:mod:`strategies.defences`: example counts capped
at the site's join-time count, ``max-site-share``; equal weighting ignores what a site
sends), updates with too large a change are rejected on acceptance, and sites are known
by node id (a name claimed by two nodes is flagged for both).

Extension point: ``reduce_group`` (one group's accepted arrays -> one). The default is
FedAvg's weighted mean; a robust rule overrides only this method
(:mod:`strategies.fedmedian`) and declares ``linear = False``.

Secure aggregation and client-level DP are wrappers around a linear rule
(:mod:`strategies.wrappers`, as Flower's DP wrappers and ``SecAggPlusWorkflow`` wrap a
strategy). They talk to the rule through its public methods below (``global_arrays``,
``track_sent``, ``forget_payload``, ``weight_cap``, ``combining_with`` ...), never its state.

Flower's own strategies are reused, not rewritten:
``GroupedFedProx(FedProx, GroupedStrategy)`` lets FedProx's ``configure_train`` add mu and
then land here; ``GroupedFedAdam(FedAdam, GroupedStrategy)`` lets FedAdam's server
optimizer run over the per-group reduction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from logging import INFO, WARNING
from typing import ClassVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result

from federation import wire
from federation.codecs import create_codec
from federation.compression import encode_weights
from strategies.acceptance import accept_replies
from strategies.aggregation import Reducer, reduce_by_group, weighted_mean
from strategies.compression import decode_reply
from strategies.defences import UpdatePolicy, WeightLedger, capped_shares
from strategies.messages import site_message, site_payload
from strategies.records import RoundRecord, arrays_nbytes
from strategies.round_loop import EvaluateFn, OnRoundEnd, run_rounds
from strategies.sampling import SiteSampling
from strategies.sites import SiteInfo, admit_sites, choose_nodes, query_sites, wait_for_nodes
from umedpt import contract

# How a round's train replies become new global arrays and metrics (see ``combining_with``).
Combine = Callable[[int, list[Message]], tuple[ArrayRecord | None, MetricRecord | None]]


class GroupedStrategy(FedAvg):
    """FedAvg whose aggregation follows the parameter groups; see the module docstring.

    Build it with :func:`server.rules.build_rule`, which also passes
    ``train/evaluate_metrics_aggr_fn=merged_metrics`` (sites report different metrics).
    """

    # True when ``reduce_group`` is a weighted mean, so that a sum of the sites' updates
    # (secure aggregation) or a clipped, noised mean (client-level DP) can stand in for it.
    linear: ClassVar[bool] = True

    # Set by ``setup`` (Flower's subclasses do not forward extra constructor arguments).
    node_wait_timeout: float = 300.0
    query_timeout: float = 120.0
    min_replies: int = 1
    eval_every: int = 1

    def setup(
        self,
        *,
        node_wait_timeout: float,
        query_timeout: float,
        min_replies: int,
        eval_every: int = 1,
        policy: UpdatePolicy | None = None,
        compression: str = "none",
        sampling: SiteSampling | None = None,
    ) -> None:
        """``compression``: the run's codec (:mod:`federation.codecs`); ``sampling``: which
        sites train in each round (None: every connected site, :mod:`strategies.sampling`)."""
        self.node_wait_timeout = node_wait_timeout
        self.query_timeout = query_timeout
        self.min_replies = min_replies
        self.eval_every = eval_every
        self.num_rounds = 0
        self.sites: dict[int, SiteInfo] = {}
        self.rounds: dict[int, RoundRecord] = {}
        self._global: ArrayRecord | None = None
        self._sent_to: dict[int, list[str]] = {}
        self._outbox: list[Message] = []  # this phase's messages, to match replies to sites
        self.policy = policy or UpdatePolicy(equal_weights=self.weighted_by_key == wire.UNIT_WEIGHT)
        self._train_weights = WeightLedger(self.policy)
        self._eval_weights = WeightLedger(self.policy)
        self.conflicts: dict[str, set[int]] = {}  # site name -> the nodes claiming it
        self._combine: Combine = self.combine_replies
        self.codec = create_codec(compression)
        self.sampling = sampling
        self._global_numpy: dict[str, np.ndarray] = {}  # the round's global, decoded once
        self._numpy_of: ArrayRecord | None = None  # ... from this record
        self._pool: list[int] = []  # the nodes this round's training sites were drawn from

    # -- the extension point ------------------------------------------------------------
    def reduce_group(
        self, group: str, arrays: list[dict[str, np.ndarray]], weights: list[float]
    ) -> dict[str, np.ndarray]:
        """Reduce one group's arrays to one.

        ``arrays`` holds one dict per accepted reply that carries ``group`` (same keys and
        shapes in each), ``weights`` their reply weights (``num-examples``, or 1 each
        with equal weighting). Return a dict with the same keys and shapes; it is cast
        back to the global dtypes. Default: FedAvg's weighted mean.
        """
        return weighted_mean(arrays, weights)

    # -- bookkeeping --------------------------------------------------------------------
    def site_name(self, node_id: int) -> str:
        site = self.sites.get(node_id)
        return site.name if site else f"node-{node_id}"

    def replying_node(self, reply: Message) -> int:
        """The node a reply answers for: the destination of the message it replies to.

        Not the reply's source: when a site is gone, the SuperLink answers in its stead
        (an error reply whose source is the SuperLink's own node id), and the rejection
        must still name the site that was asked.
        """
        asked = {m.metadata.message_id: m.metadata.dst_node_id for m in self._outbox}
        asked.pop("", None)  # not pushed through a grid: no id to match by
        return asked.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)

    def reply_order(self, reply: Message) -> tuple[str, int]:
        """A sort key of replies that is the same in every run: the site's name (then node)."""
        node = self.replying_node(reply)
        return self.site_name(node), node

    def round_record(self, server_round: int) -> RoundRecord:
        return self.rounds.setdefault(server_round, RoundRecord(server_round))

    # -- what wrappers use (strategies.wrappers) ------------------------------------------
    @property
    def global_arrays(self) -> ArrayRecord:
        """The global arrays of the round being trained (set by ``configure_train``)."""
        if self._global is None:
            raise RuntimeError("no round is being trained: configure_train was not called")
        return self._global

    def track_sent(self, messages: list[Message]) -> None:
        """``messages`` are what this phase sent: replies are matched to sites by them."""
        self._outbox = messages

    def forget_payload(self, node: int) -> None:
        """``node`` is out of this round's training: a reply from it will be refused."""
        self._sent_to.pop(node, None)

    def weight_cap(self, node: int) -> float | None:
        """The most weight the server allows ``node``'s train reply (None: none known yet).

        The join-time example count (``examples-per-step`` x ``local-steps``), else the
        first count accepted from that site (``defences.WeightLedger``).
        """
        site = self.sites.get(node)
        joined = site.example_cap(self.policy.local_steps) if site is not None else None
        return self._train_weights.known_cap(node, joined=joined)

    def note_weight(self, node: int, weight: float) -> None:
        """Record a weight the server accepted from ``node`` (its first becomes its cap)."""
        self._train_weights.caps.setdefault(node, weight)

    @contextlib.contextmanager
    def combining_with(self, combine: Combine) -> Iterator[None]:
        """Within the block, train replies become arrays through ``combine``, not
        ``combine_replies``; what the rule does after (FedAdam's server step) still runs."""
        previous, self._combine = self._combine, combine
        try:
            yield
        finally:
            self._combine = previous

    def _messages(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid, kind: str
    ) -> list[Message]:
        train = kind == MessageType.TRAIN
        fraction = self.fraction_train if train else self.fraction_evaluate
        if fraction == 0.0:
            return []
        minimum = self.min_train_nodes if train else self.min_evaluate_nodes
        if train:
            connected = wait_for_nodes(
                grid, max(minimum, self.min_available_nodes), timeout=self.node_wait_timeout
            )
            sampling = self.sampling if self.sampling and self.sampling.samples else None
            # Sampling draws among known sites, so every connected one is asked first.
            nodes = connected if sampling else choose_nodes(connected, fraction, minimum)
            unknown = [n for n in nodes if n not in self.sites]
            admit_sites(
                self.sites,
                query_sites(
                    grid, unknown, timeout=self.query_timeout, config_key=self.configrecord_key
                ),
                connected=connected,
                conflicts=self.conflicts,
            )
            if sampling:
                available = {n: self.sites[n].name for n in connected if n in self.sites}
                nodes = sampling.choose(available, server_round)
                self._pool = sorted(available)
                self.round_record(server_round).sites_available = len(available)
                log(
                    INFO,
                    "round %s: training %d of %d sites (seeded sample): %s",
                    server_round,
                    len(nodes),
                    len(available),
                    ", ".join(self.site_name(n) for n in nodes),
                )
        else:
            # Evaluation runs inside the round's deadline: no waiting for sites and no
            # queries, just the known sites that are still connected.
            nodes = sorted(n for n in grid.get_node_ids() if n in self.sites)
        config[wire.SERVER_ROUND] = server_round
        config[wire.COMPRESSION] = self.codec.name
        record = self.round_record(server_round)
        messages = self._outbox = []
        sent = arrays
        if self.codec.name != "none":  # the global encoded once, each site sent its groups
            sent, encoded = encode_weights(self.global_numpy(arrays), self.codec.name)
            if encoded.fallbacks:
                log(
                    WARNING,
                    "round %s: %d tensor(s) beyond %s's range sent as float32: %s",
                    server_round,
                    len(encoded.fallbacks),
                    self.codec.downlink,
                    ", ".join(encoded.fallbacks[:5]),
                )
        for node in nodes:
            if (site := self.sites.get(node)) is None:
                continue
            payload = site_payload(sent, site)
            messages.append(
                site_message(
                    payload,
                    config,
                    node_id=node,
                    message_type=kind,
                    arrayrecord_key=self.arrayrecord_key,
                    configrecord_key=self.configrecord_key,
                )
            )
            if train:
                self._sent_to[node] = [k for k in site_payload(arrays, site).keys()]
                record.bytes_sent[site.name] = arrays_nbytes(payload)
            else:
                record.bytes_sent_for_evaluation[site.name] = arrays_nbytes(payload)
        return messages

    def sampling_pool(self) -> dict[str, list[str]]:
        """The sites this round's training sites were drawn from (empty without sampling),
        each with the groups it would have carried: any of them could have been in the
        release, so client-level DP accounts each (:mod:`strategies.central_dp`)."""
        released = {contract.group_of(k) for k in self.global_arrays.keys()}
        return {
            self.sites[n].name: sorted(released & set(self.sites[n].groups))
            for n in self._pool
            if n in self.sites
        }

    def global_numpy(self, arrays: ArrayRecord | None = None) -> dict[str, np.ndarray]:
        """The round's global weights (``arrays``, else the last trained) as numpy, once."""
        source = arrays if arrays is not None else self._global
        if source is None:
            return {}
        if self._numpy_of is not source:
            self._numpy_of = source
            self._global_numpy = {k: v.numpy() for k, v in source.items()}
        return self._global_numpy

    def _decode(self, reply: Message, keys: list[str]) -> str | None:
        """A training reply's encoded change as float32 weights (:mod:`strategies.compression`)."""
        return decode_reply(reply, self.codec, self.global_numpy(), keys)

    def _accept(
        self, server_round: int, replies: Iterable[Message], *, train: bool
    ) -> list[Message]:
        """The usable replies, in the order of their sites' names: replies arrive in any order,
        and a float sum in arrival order made the same run end differently (node ids are no
        key for it either: a simulation draws new ones every run)."""
        return accept_replies(
            sorted(replies, key=self.reply_order),
            record=self.round_record(server_round),
            site_name=self.site_name,
            replying_node=self.replying_node,
            sent_to=self._sent_to,
            reference=self._global if self._global is not None else {},
            weight_key=None if self.policy.equal_weights else self.weighted_by_key,
            train=train,
            policy=self.policy,
            decode=self._decode if self.codec.sends_change else None,
        )

    def _weights(self, replies: list[Message], *, train: bool) -> list[float]:
        """The server's weight of each accepted reply (``defences.WeightLedger``)."""
        ledger = self._train_weights if train else self._eval_weights
        weights = []
        for reply in replies:
            node = self.replying_node(reply)
            claimed = next(iter(reply.content.metric_records.values())).get(self.weighted_by_key)
            site = self.sites.get(node)
            joined = site.example_cap(self.policy.local_steps) if site and train else None
            claim = float(claimed) if isinstance(claimed, int | float) else None
            weights.append(ledger.weight(node, claim, joined=joined))
        return weights

    def _metrics(self, replies: list[Message], weights: list[float], *, train: bool):
        """Flower's metrics function over the replies, weighted by the server's weights."""
        total = sum(weights)
        shares = capped_shares(weights, self.policy.max_site_share)
        contents = []
        for reply, share in zip(replies, shares, strict=True):
            metrics = dict(next(iter(reply.content.metric_records.values())))
            metrics[self.weighted_by_key] = share * total
            contents.append(RecordDict({wire.METRICS: MetricRecord(metrics)}))
        aggregate = self.train_metrics_aggr_fn if train else self.evaluate_metrics_aggr_fn
        return aggregate(contents, self.weighted_by_key)

    def _reducer(self) -> Reducer:
        """The round's per-group rule: ``reduce_group`` on capped shares."""
        max_share = self.policy.max_site_share

        def reduce(group: str, arrays: list[dict[str, np.ndarray]], weights: list[float]):
            return self.reduce_group(group, arrays, capped_shares(weights, max_share))

        return reduce

    # -- Flower's hooks -----------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = arrays
        self._sent_to = {}
        self._pool = []
        return self._messages(server_round, arrays, config, grid, MessageType.TRAIN)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        due = server_round % self.eval_every == 0 or server_round == self.num_rounds
        if not due:
            return []
        return self._messages(server_round, arrays, config, grid, MessageType.EVALUATE)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self._combine(server_round, list(replies))

    def combine_replies(
        self, server_round: int, replies: list[Message], reducer: Reducer | None = None
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Accept the replies, weigh them and reduce each group (``reducer``, default:
        ``reduce_group`` on capped shares). (None, None) when too few are usable."""
        accepted = self._accept(server_round, replies, train=True)
        if len(accepted) < self.min_replies:
            log(
                WARNING,
                "round %s: %d usable replies, fewer than the minimum of %d sites: weights kept",
                server_round,
                len(accepted),
                self.min_replies,
            )
            return None, None
        if self._global is None:
            raise RuntimeError("aggregate_train called before configure_train")
        weights = self._weights(accepted, train=True)
        record = self.round_record(server_round)
        for reply, weight in zip(accepted, weights, strict=True):
            record.weights[self.site_name(self.replying_node(reply))] = weight
        contributions = [
            (next(iter(r.content.array_records.values())), w)
            for r, w in zip(accepted, weights, strict=True)
        ]
        arrays, updated = reduce_by_group(self._global, contributions, reducer or self._reducer())
        record.updated_groups.extend(updated)
        return arrays, self._metrics(accepted, weights, train=True)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        accepted = self._accept(server_round, replies, train=False)
        if not accepted:
            return None
        return self._metrics(accepted, self._weights(accepted, train=False), train=False)

    # -- for the report -----------------------------------------------------------------
    def name_conflicts(self) -> list[dict[str, object]]:
        """Names claimed by more than one node: [{name, nodes, filed_as}], for the report."""
        return [
            {
                "name": name,
                "nodes": sorted(nodes),
                "filed_as": [self.site_name(n) for n in sorted(nodes)],
            }
            for name, nodes in sorted(self.conflicts.items())
        ]

    def restore_history(self, rounds: list[dict[str, object]]) -> None:
        """On resume: replay the earlier rounds' records (a wrapper's releases so far)."""

    def client_dp_summary(self) -> dict[str, dict[str, float]]:
        """{group: {epsilon, ...}} of client-level DP; empty here (see the DP wrapper)."""
        return {}

    def client_dp_site_summary(self) -> dict[str, dict[str, object]]:
        """{site: {epsilon, ...}} of client-level DP, over its groups; empty here."""
        return {}

    # -- server-optimizer state, for checkpoints ----------------------------------------
    def state_arrays(self) -> dict[str, np.ndarray]:
        """Arrays the rule must keep across a restart (FedAdam's moments); none here."""
        return {}

    def load_state_arrays(self, state: dict[str, np.ndarray]) -> None:
        if state:
            raise ValueError(
                f"{type(self).__name__} keeps no optimizer state, got {len(state)} arrays"
            )

    # -- the round loop -----------------------------------------------------------------
    def start(  # type: ignore[override]
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: EvaluateFn | None = None,
        *,
        start_round: int = 1,
        on_round_end: OnRoundEnd | None = None,
    ) -> Result:
        """Flower's round loop plus ``start_round`` (resume) and ``on_round_end``.

        Raises RoundFailedError when a round cannot aggregate or too few sites connect.
        See :mod:`strategies.round_loop`.
        """
        return run_rounds(
            self,
            grid,
            initial_arrays,
            num_rounds=num_rounds,
            timeout=timeout,
            train_config=train_config,
            evaluate_config=evaluate_config,
            evaluate_fn=evaluate_fn,
            start_round=start_round,
            on_round_end=on_round_end,
        )
