"""In-process Flower Grids: every message is answered in this process, one after another.

``ClientAppGrid`` delivers each message to the real ClientApp of its node, for
deterministic experiments (experiments/recipe.py) and tests: the same ServerApp logic and
ClientApp code as a real federation, without Ray or network. Tests read every message both
ways (``sent``, ``received``); long benchmark runs pass ``record_messages=False``, since each
message holds the weights (120 rounds of 3 sites held 15 GB). Not for production: nodes run
one after another.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.supercore.task_identity import TaskIdentity

# Messages built outside a Flower run need a task identity (the simulation sets the same).
TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0


class InProcessGrid:
    """The Grid calls the strategies make, answered by ``deliver`` in this process.

    Like Flower's grids, it gives every message an id when it is sent, so replies can be
    matched to what they answer (``reply_to_message_id``).
    """

    def __init__(self, node_ids: Iterable[int], *, record_messages: bool = True) -> None:
        self.node_ids = list(node_ids)
        self.record_messages = record_messages
        self.sent: list[Message] = []
        self.received: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)

    def deliver(self, message: Message) -> Message | None:
        """The reply of the message's node, or None when it does not answer."""
        raise NotImplementedError

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        replies = []
        for message in messages:
            # Flower 1.42.0's InMemoryGrid.push_messages sets the id the same way.
            message.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            if self.record_messages:
                self.sent.append(message)
            if (reply := self.deliver(message)) is not None:
                if self.record_messages:
                    self.received.append(reply)
                replies.append(reply)
        return replies


class ClientAppGrid(InProcessGrid):
    """Delivers each message to the real ClientApp of its node, in this process."""

    def __init__(
        self,
        client_app: ClientApp,
        node_configs: dict[int, dict[str, Any]],
        run_config: dict[str, Any],
        *,
        failing: Callable[[int, Message], bool] | None = None,
        record_messages: bool = True,
    ) -> None:
        super().__init__(node_configs, record_messages=record_messages)
        self.client_app = client_app
        self.contexts = {
            node: Context(1, node, dict(config), RecordDict(), dict(run_config))
            for node, config in node_configs.items()
        }
        self.failing = failing

    def deliver(self, message: Message) -> Message | None:
        node = message.metadata.dst_node_id
        if self.failing and self.failing(node, message):
            return None  # the site vanished: no reply at all
        return self.client_app(message, self.contexts[node])
