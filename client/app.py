"""The site's Flower ClientApp: a thin layer over :class:`client.site.SiteRunner`.

Which site a node is: ``--node-config "site-config='/path/site.toml'"`` on a SuperNode,
or, in simulation, entry ``partition-id`` of the run config's ``site-configs`` list.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.site import SiteError, SiteRunner
from umedpt import contract
from umedpt.config import load_site_config
from umedpt.run_config import THREADS_ENV, settings_for_app

SITE_CONFIG_NODE_KEY = "site-config"

app = ClientApp()


def site_runner(context: Context, message: Message | None = None) -> SiteRunner:
    settings = settings_for_app(context.run_config)
    if message is not None and contract.CONFIG_KEY in message.content:
        run_key = message.content[contract.CONFIG_KEY].get("run-key")
        if run_key:  # chosen by the server; names this run's local state folder
            settings = dataclasses.replace(settings, run_key=str(run_key))
    node_config: Mapping[str, Any] = context.node_config
    if SITE_CONFIG_NODE_KEY in node_config:
        path = str(node_config[SITE_CONFIG_NODE_KEY])
    elif "partition-id" in node_config and settings.site_config_list():
        sites = settings.site_config_list()
        index = int(node_config["partition-id"])
        if index >= len(sites):
            raise SiteError(
                f"simulated node {index} has no site: only {len(sites)} site configs given"
            )
        path = sites[index]
    else:
        raise SiteError(
            "this SuperNode does not know its site: start it with "
            f"--node-config \"{SITE_CONFIG_NODE_KEY}='/path/to/site.toml'\""
        )
    torch.set_num_threads(max(1, int(os.environ.get(THREADS_ENV, torch.get_num_threads()))))
    return SiteRunner(load_site_config(path), settings)


def shared_from(message: Message) -> dict[str, torch.Tensor]:
    return message.content[contract.SHARED_ARRAYS_KEY].to_torch_state_dict()


def metric_reply(
    message: Message, metrics: dict[str, float], num_examples: int, arrays=None
) -> Message:
    content = RecordDict(
        {contract.METRICS_KEY: MetricRecord({**metrics, contract.NUM_EXAMPLES_KEY: num_examples})}
    )
    if arrays is not None:
        content[contract.SHARED_ARRAYS_KEY] = arrays
    return Message(content, reply_to=message)


@app.query()
def describe(message: Message, context: Context) -> Message:
    """Tell the server the site's name and which shared blocks it trains."""
    info = ConfigRecord(site_runner(context).describe())
    return Message(RecordDict({contract.SITE_INFO_KEY: info}), reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    config = message.content[contract.CONFIG_KEY]
    runner = site_runner(context, message)
    outcome = runner.train_round(
        shared_from(message),
        int(config[contract.SERVER_ROUND_KEY]),
        proximal_mu=float(config.get("proximal-mu", 0.0)),
    )
    # Exactly the keys received, in the same order: heads never leave the site.
    arrays = ArrayRecord(
        {k: outcome.shared[k] for k in message.content[contract.SHARED_ARRAYS_KEY].keys()}
    )
    return metric_reply(message, outcome.metrics, outcome.num_examples, arrays)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    config = message.content[contract.CONFIG_KEY]
    runner = site_runner(context, message)
    metrics, count = runner.evaluate_round(
        shared_from(message), int(config[contract.SERVER_ROUND_KEY])
    )
    return metric_reply(message, metrics, count)
