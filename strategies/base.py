"""``GroupedStrategy``: Flower's FedAvg with aggregation per parameter group.

The server holds ``encoder.*`` and every ``blocks.<b>.*``. Each site is sent only the
encoder and the blocks its tasks use (it says which when first asked, by a query
message; :mod:`strategies.sites`), and must send back exactly those keys
(:mod:`strategies.validation`). ``encoder.*`` is reduced over all accepted replies,
each ``blocks.<b>.*`` over the replies that carry it (:mod:`strategies.aggregation`).
Heads never travel.

Extension point: ``reduce_group`` (one group's accepted arrays -> one). The default is
FedAvg's weighted mean; a robust rule overrides only this method
(:mod:`strategies.fedmedian`). Flower's own strategies are reused, not rewritten:
``GroupedFedProx(FedProx, GroupedStrategy)`` lets FedProx's ``configure_train`` add mu and
then land here; ``GroupedFedAdam(FedAdam, GroupedStrategy)`` lets FedAdam's server
optimizer run over the per-group reduction.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result

from strategies.acceptance import accept_replies
from strategies.aggregation import reduce_by_group, weighted_mean
from strategies.messages import site_message, site_payload
from strategies.records import RoundRecord, arrays_nbytes
from strategies.round_loop import EvaluateFn, OnRoundEnd, run_rounds
from strategies.sites import SiteInfo, choose_nodes, query_sites, wait_for_nodes
from umedpt_fl import wire


class GroupedStrategy(FedAvg):
    """FedAvg whose aggregation follows the parameter groups; see the module docstring.

    Build it with :func:`strategies.build_strategy`, which also passes
    ``train/evaluate_metrics_aggr_fn=merged_metrics`` (sites report different metrics).
    """

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
    ) -> None:
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

    def round_record(self, server_round: int) -> RoundRecord:
        return self.rounds.setdefault(server_round, RoundRecord(server_round))

    def _messages(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid, kind: str
    ) -> list[Message]:
        train = kind == MessageType.TRAIN
        fraction = self.fraction_train if train else self.fraction_evaluate
        if fraction == 0.0:
            return []
        minimum = self.min_train_nodes if train else self.min_evaluate_nodes
        if train:
            nodes = wait_for_nodes(
                grid, max(minimum, self.min_available_nodes), timeout=self.node_wait_timeout
            )
            nodes = choose_nodes(nodes, fraction, minimum)
            unknown = [n for n in nodes if n not in self.sites]
            self.sites.update(
                query_sites(
                    grid, unknown, timeout=self.query_timeout, config_key=self.configrecord_key
                )
            )
        else:
            # Evaluation runs inside the round's deadline: no waiting for sites and no
            # queries, just the known sites that are still connected.
            nodes = sorted(n for n in grid.get_node_ids() if n in self.sites)
        config[wire.SERVER_ROUND] = server_round
        record = self.round_record(server_round)
        messages = self._outbox = []
        for node in nodes:
            if (site := self.sites.get(node)) is None:
                continue
            payload = site_payload(arrays, site)
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
                self._sent_to[node] = list(payload.keys())
                record.bytes_sent[site.name] = arrays_nbytes(payload)
            else:
                record.bytes_sent_for_evaluation[site.name] = arrays_nbytes(payload)
        return messages

    def _accept(
        self, server_round: int, replies: Iterable[Message], *, train: bool
    ) -> list[Message]:
        return accept_replies(
            list(replies),
            record=self.round_record(server_round),
            site_name=self.site_name,
            replying_node=self.replying_node,
            sent_to=self._sent_to,
            reference=self._global if self._global is not None else {},
            weight_key=self.weighted_by_key,
            train=train,
        )

    # -- Flower's hooks -----------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = arrays
        self._sent_to = {}
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
        contributions = [
            (
                next(iter(r.content.array_records.values())),
                float(next(iter(r.content.metric_records.values()))[self.weighted_by_key]),
            )
            for r in accepted
        ]
        arrays, updated = reduce_by_group(self._global, contributions, self.reduce_group)
        self.round_record(server_round).updated_groups.extend(updated)
        metrics = self.train_metrics_aggr_fn([r.content for r in accepted], self.weighted_by_key)
        return arrays, metrics

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        accepted = self._accept(server_round, replies, train=False)
        if not accepted:
            return None
        return self.evaluate_metrics_aggr_fn([r.content for r in accepted], self.weighted_by_key)

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
