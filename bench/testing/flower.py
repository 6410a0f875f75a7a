"""A Flower Grid without Flower's runtime: each message goes to the ClientApp in this process.

For fast tests of ``TierBenchStrategy`` and the ClientApp (messages, records, the client's own build
of the run) without starting Ray or a SuperLink; the simulation and deployment engines are tested
end to end in the slow tests.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

if TYPE_CHECKING:
    from flwr.clientapp import ClientApp


class InProcessGrid:
    """The part of ``flwr.serverapp.Grid`` that ``Strategy.start`` uses, over ``nodes`` virtual SuperNodes."""

    def __init__(self, client_app: ClientApp, nodes: int) -> None:
        self.client_app = client_app
        self.nodes = list(range(1, nodes + 1))
        self.sent: list[Message] = []
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0  # what Flower's runtime sets per process

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for message in messages:
            self.sent.append(message)
            context = Context(run_id=1, node_id=message.metadata.dst_node_id, node_config={"partition-id": self.nodes.index(message.metadata.dst_node_id),
                                           "num-partitions": len(self.nodes)}, state=RecordDict(),
                              run_config={})
            TaskIdentity.node_id = message.metadata.dst_node_id
            try:
                replies.append(self.client_app(message, context))
            finally:
                TaskIdentity.node_id = 0
        return replies
