"""The round loop, with what Flower's lacks: resume, a per-round hook, failing loudly.

MIRRORS ``flwr.serverapp.strategy.Strategy.start`` of Flower 1.42.0 (configure_train ->
send_and_receive -> aggregate_train -> configure_evaluate -> send_and_receive ->
aggregate_evaluate -> evaluate_fn, per round). On a Flower upgrade, diff that method
against this function; nothing else in ``strategies`` copies Flower's control flow.

Differences, on purpose:
- ``start_round``: resume after a checkpoint (Flower always starts at round 1);
- ``on_round_end(round, arrays, record)``: checkpoints and reports after every round;
- a round whose aggregation yields nothing raises ``RoundFailedError`` (Flower keeps the
  old weights and carries on, which repeats the same weights while looking like progress);
- ``timeout`` is one deadline per round, for training and evaluation together (Flower
  gives each phase the full timeout); evaluation gets what training left, and is skipped,
  with a warning, when nothing is left;
- each round gets a fresh copy of the configs (the strategy writes into them);
- no evaluation of the initial weights by ``evaluate_fn`` at round 0, no start banner.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from logging import INFO, WARNING
from typing import TYPE_CHECKING

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result

from strategies.records import RoundFailedError, RoundRecord

if TYPE_CHECKING:
    from strategies.base import GroupedStrategy

OnRoundEnd = Callable[[int, ArrayRecord, RoundRecord], None]
EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


def run_rounds(
    strategy: GroupedStrategy,
    grid: Grid,
    initial_arrays: ArrayRecord,
    *,
    num_rounds: int,
    timeout: float,
    train_config: ConfigRecord | None,
    evaluate_config: ConfigRecord | None,
    evaluate_fn: EvaluateFn | None,
    start_round: int,
    on_round_end: OnRoundEnd | None,
    clock: Callable[[], float] = time.monotonic,
) -> Result:
    """Rounds ``start_round..num_rounds`` of ``strategy``; see the module docstring.

    ``clock`` (seconds) measures each round against its deadline; tests pass a fake one.
    """
    result = Result(arrays=initial_arrays)
    arrays = initial_arrays
    strategy.num_rounds = num_rounds
    log(INFO, "each round has %.0f s for training and evaluation together", timeout)
    for server_round in range(start_round, num_rounds + 1):
        record = strategy.round_record(server_round)
        record.started = time.time()
        tic = time.perf_counter()
        log(INFO, "[ROUND %s/%s]", server_round, num_rounds)
        messages = strategy.configure_train(
            server_round, arrays, ConfigRecord(dict(train_config or {})), grid
        )
        deadline = clock() + timeout
        replies = grid.send_and_receive(messages, timeout=timeout)
        aggregated, train_metrics = strategy.aggregate_train(server_round, replies)
        if aggregated is None:
            raise RoundFailedError(
                f"round {server_round}: fewer than {strategy.min_replies} sites sent usable "
                f"updates; rejected: {record.rejected}"
            )
        result.arrays = arrays = aggregated
        if train_metrics is not None:
            result.train_metrics_clientapp[server_round] = train_metrics
        messages = list(
            strategy.configure_evaluate(
                server_round, arrays, ConfigRecord(dict(evaluate_config or {})), grid
            )
        )
        left = deadline - clock()
        if messages and left <= 0:
            log(WARNING, "round %s: no time left before its deadline: not evaluated", server_round)
        elif messages:
            replies = grid.send_and_receive(messages, timeout=left)
            if (evaluated := strategy.aggregate_evaluate(server_round, replies)) is not None:
                result.evaluate_metrics_clientapp[server_round] = evaluated
        if evaluate_fn and (server_metrics := evaluate_fn(server_round, arrays)) is not None:
            result.evaluate_metrics_serverapp[server_round] = server_metrics
        record.seconds = time.perf_counter() - tic
        if on_round_end:
            on_round_end(server_round, arrays, record)
    return result
