"""An in-process Flower Grid: every node is the real ClientApp, called in this process.

For deterministic experiments (bench/federated.py) and tests: the same ServerApp logic
and ClientApp code as a real federation, without Ray or network, recording every message
both ways. Not for production: nodes run one after another.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.supercore.task_identity import TaskIdentity

# Messages built outside a Flower run need a task identity (the simulation sets the same).
TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0


class ClientAppGrid:
    """Delivers each message to the real ClientApp of its node, in this process."""

    def __init__(
        self,
        client_app: ClientApp,
        node_configs: dict[int, dict[str, Any]],
        run_config: dict[str, Any],
        *,
        failing: Callable[[int, Message], bool] | None = None,
    ) -> None:
        self.client_app = client_app
        self.contexts = {
            node: Context(1, node, dict(config), RecordDict(), dict(run_config))
            for node, config in node_configs.items()
        }
        self.failing = failing
        self.sent: list[Message] = []
        self.received: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        replies = []
        for message in messages:
            self.sent.append(message)
            node = message.metadata.dst_node_id
            if self.failing and self.failing(node, message):
                continue  # the site vanished: no reply at all
            reply = self.client_app(message, self.contexts[node])
            self.received.append(reply)
            replies.append(reply)
        return replies
