"""The site's Flower ClientApp: a thin layer over :class:`client.site.SiteRunner`.

Which site a node is: ``--node-config "site-config='/path/site.toml'"`` on a SuperNode,
or, in simulation, entry ``partition-id`` of the run config's ``site-configs`` list.
"""

from __future__ import annotations

from federation.entry import enter_app_process

enter_app_process()  # before Flower and torch are imported: see federation.entry

import dataclasses
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.common.logger import FLOWER_LOGGER

from client import secagg
from client.compression import as_change, compressed, received_tensors
from client.message_clock import MessageClock
from client.refusals import reason_only, refusal_reply
from client.site import (
    PrivacyBudgetSpent,
    SentReply,
    SiteError,
    SiteRunner,
    bytes_per_group,
    describe_site,
)
from federation import wire
from federation.packing import packing_mod
from federation.reasons import Refusal
from federation.settings import THREADS_ENV, RunSettings, settings_for_app
from umedpt.config import SiteConfig, load_site_config

SITE_CONFIG_NODE_KEY = "site-config"
# Optional: the coordinator's HOST:PORT, only so the site's log can name it (a ClientApp
# is not told where its SuperNode connects).
COORDINATOR_NODE_KEY = "coordinator"

# Around every handler: an exception (or a handler's own error reply) leaves the site as
# its reason class only; the details go to the site's log (client.refusals). Inside it,
# packed weights are unpacked on arrival and a train reply packed (federation.packing).
app = ClientApp(mods=[reason_only, packing_mod])


class _ToFlowerLog(logging.Handler):
    """Hands a record to Flower's logger, whose handlers make the site's log."""

    def emit(self, record: logging.LogRecord) -> None:
        FLOWER_LOGGER.handle(record)


def show_site_lines_in_flowers_log() -> None:
    """The site's modules (``client.site`` and the ones it uses) log with the standard
    ``logging`` module, under ``client``; in a ClientApp process the site's log is Flower's
    (its console handler, which a SuperNode shows), so their lines go there."""
    site_log = logging.getLogger("client")
    if not any(isinstance(h, _ToFlowerLog) for h in site_log.handlers):
        site_log.addHandler(_ToFlowerLog())
    site_log.setLevel(logging.INFO)
    # Not to the root logger as well: where it has a handler too (a `umedpt-fl` command
    # that runs the sites in its own process) every line would show twice.
    site_log.propagate = False


show_site_lines_in_flowers_log()


def site_settings(context: Context) -> RunSettings:
    """The run's settings as a site is given them: those only the server needs (paths,
    tracking, the rule) stay at their defaults, whatever reached this process."""
    return settings_for_app(context.run_config).as_a_site_sees_it()


def run_settings(context: Context, message: Message | None = None) -> RunSettings:
    """The run's settings, with the run key the server chose for this run."""
    settings = site_settings(context)
    if message is not None and wire.CONFIG in message.content:
        run_key = message.content[wire.CONFIG].get(wire.RUN_KEY)
        if run_key:  # chosen by the server; names this run's local state folder
            settings = dataclasses.replace(settings, run_key=str(run_key))
    return settings


def site_config(context: Context) -> SiteConfig:
    """Which site this node is: its SuperNode's node config, or its simulated partition."""
    node_config: Mapping[str, Any] = context.node_config
    if SITE_CONFIG_NODE_KEY in node_config:
        return load_site_config(str(node_config[SITE_CONFIG_NODE_KEY]))
    sites = site_settings(context).site_config_list()
    if "partition-id" in node_config and sites:
        index = int(node_config["partition-id"])
        if index >= len(sites):
            raise SiteError(
                f"simulated node {index} has no site: only {len(sites)} site configs given"
            )
        return load_site_config(sites[index])
    raise SiteError(
        "this SuperNode does not know its site: start it with "
        f"--node-config \"{SITE_CONFIG_NODE_KEY}='/path/to/site.toml'\""
    )


def site_runner(context: Context, message: Message) -> SiteRunner:
    torch.set_num_threads(max(1, int(os.environ.get(THREADS_ENV, torch.get_num_threads()))))
    return SiteRunner(site_config(context), run_settings(context, message))


def message_clock(message: Message) -> MessageClock:
    """Start timing ``message`` in its handler (client.message_clock)."""
    return MessageClock(created=message.metadata.created_at or None)


def shared_from(message: Message) -> dict[str, torch.Tensor]:
    """The server's weights, decoded by the codec its message names (client.compression)."""
    return received_tensors(message)


def metric_reply(
    message: Message, metrics: dict[str, float], num_examples: int, arrays=None
) -> Message:
    """The reply's scalars; undefined (NaN) metrics, e.g. the AUROC of a class without
    positives in the split, are left out rather than averaged into the server's."""
    defined = {k: v for k, v in metrics.items() if math.isfinite(v)}
    content = RecordDict({wire.METRICS: MetricRecord({**defined, wire.NUM_EXAMPLES: num_examples})})
    if arrays is not None:
        content[wire.SHARED_ARRAYS] = arrays
    return Message(content, reply_to=message)


def sent_metrics(reply: Message) -> dict[str, float]:
    """The scalars a reply carries, as the site's log records them."""
    return dict(reply.content[wire.METRICS])


def coordinator(context: Context) -> str | None:
    value = context.node_config.get(COORDINATOR_NODE_KEY)
    return str(value) if value else None


def error_reply(message: Message, reason: Refusal) -> Message:
    """A reply that carries no content, only the class of why the site did not do what it
    was asked (:class:`federation.reasons.Refusal`); the details stay in the site's log."""
    return refusal_reply(message, reason)


@app.query()
def describe(message: Message, context: Context) -> Message:
    """Tell the server the site's name and which shared blocks it trains."""
    share_blocks = site_settings(context).share_blocks
    info = ConfigRecord(describe_site(site_config(context), share_blocks=share_blocks))
    return Message(RecordDict({wire.SITE_INFO: info}), reply_to=message)


@dataclasses.dataclass(frozen=True)
class TrainedReply:
    """A train reply not yet sent, with what the site's log needs to describe it."""

    message: Message
    runner: SiteRunner
    train_seconds: float = 0.0
    steps: int = 0
    clock: MessageClock | None = None  # where the message's time went, until it is logged

    def log_as_sent(self, sent: Message, context: Context) -> Message:
        """Log ``sent`` (the reply exactly as it leaves: plain, masked or an error) and
        return it."""
        if sent.has_error():
            self.runner.log_refused(int(self.config[wire.SERVER_ROUND]), str(sent.error.reason))
            return sent
        arrays = sent.content[wire.SHARED_ARRAYS]
        sizes = {key: len(array.data) for key, array in arrays.items()}  # as serialised
        self.runner.log_sent(
            SentReply(
                kind="train",
                server_round=int(self.config[wire.SERVER_ROUND]),
                groups=bytes_per_group(sizes),
                metrics=sent_metrics(sent),
                train_seconds=self.train_seconds,
                steps=self.steps,
                timings=self.clock.timings() if self.clock is not None else None,
            ),
            coordinator=coordinator(context),
        )
        return sent

    @property
    def config(self) -> Any:
        return self.message.content[wire.CONFIG]


def train_reply(message: Message, context: Context) -> tuple[Message, TrainedReply]:
    """Train one round; the plain reply (or an error reply), not yet logged."""
    config = message.content[wire.CONFIG]
    clock = message_clock(message)
    with clock.stage("model_built"):
        runner = site_runner(context, message)
    shared = shared_from(message)  # decoded: the tensors, none of a codec's own entries
    try:
        outcome = runner.train_round(
            shared,
            int(config[wire.SERVER_ROUND]),
            proximal_mu=float(config.get(wire.PROXIMAL_MU, 0.0)),
        )
    except PrivacyBudgetSpent:
        # An error reply, not a crash: the server rejects it naming the site and the reason
        # class; the site's log has the numbers (client.site).
        return error_reply(message, Refusal.PRIVACY_BUDGET_EXHAUSTED), TrainedReply(message, runner)
    # Exactly the tensors received, in the same order: heads never leave the site.
    arrays = ArrayRecord({k: outcome.shared[k] for k in shared})
    reply = metric_reply(message, outcome.metrics, outcome.num_examples, arrays)
    clock.seconds.update(state_restored=outcome.restore_seconds, trained=outcome.train_seconds)
    return reply, TrainedReply(message, runner, outcome.train_seconds, outcome.steps, clock)


@app.train()
def train(message: Message, context: Context) -> Message:
    """A plain (unmasked) round; refused, untrained, by a site that requires secure aggregation."""
    if site_config(context).require_secure_aggregation:
        reason = (
            "this site requires secure aggregation (require_secure_aggregation = true in its "
            "site file) and sends no plain update: start the server with --secure-aggregation"
        )
        logging.getLogger("client.app").warning("plain train message refused: %s", reason)
        return error_reply(message, Refusal.SECURE_AGGREGATION_REQUIRED)  # the words stay here
    reply, trained = train_reply(message, context)
    # Under a lossy codec: the change, encoded (and int8's residual kept for next time).
    reply = compressed(reply, message, trained.runner.rounds, trained.runner.site.name)
    return trained.log_as_sent(reply, context)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    config = message.content[wire.CONFIG]
    clock = message_clock(message)
    with clock.stage("model_built"):
        runner = site_runner(context, message)
    metrics, count = runner.evaluate_round(shared_from(message), int(config[wire.SERVER_ROUND]))
    reply = metric_reply(message, metrics, count)
    sent = SentReply(
        "evaluate", int(config[wire.SERVER_ROUND]), {}, sent_metrics(reply),
        timings=clock.timings(),
    )  # fmt: skip
    runner.log_sent(sent, coordinator=coordinator(context))
    return reply


# -- secure aggregation (client/secagg.py): its four stages as named message types; the
# masked stage runs `train` above and masks its reply.
def change_reply(message: Message, context: Context) -> tuple[Message, TrainedReply]:
    """Under secure aggregation: the plain reply, as its change when the run's codec sends
    changes (the server adds the unmasked mean change to the global it sent)."""
    reply, trained = train_reply(message, context)
    return as_change(reply, message), trained


secagg.register(app, change_reply)
