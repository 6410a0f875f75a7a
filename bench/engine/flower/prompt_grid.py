"""A deployed ServerApp's Grid that collects replies as they arrive instead of every 3 seconds.

Flower 1.41's ``HttpGrid.send_and_receive`` pushes a round's messages, then pulls the replies and sleeps
3 s between pulls until all are in (``flwr/superlink/grid/http_grid.py``), so every deployed round waited
up to 3 s after its last reply for nothing (the smoke cell's round, about 1 s of training and building,
took 7 s from the last ClientApp's exit to the next round's tasks). ``PromptGrid`` wraps the ServerApp's
Grid and does the same push and pull with ``poll_s`` between pulls; everything else is the wrapped Grid's.
The same messages, replies and timeout semantics: only the wait changes.

Not ours to change: the SuperNode, when it finds no message, sleeps 3 s before asking again
(``flwr/supernode/start_client_internal.py``), so a round still waits up to 3 s for its nodes to notice it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from bench.engine.flower import import_flwr

import_flwr()

from flwr.serverapp import Grid  # noqa: E402

if TYPE_CHECKING:
    from flwr.app import Message, RecordDict
    from flwr.common import Run

POLL_S = 0.1
"""Seconds between pulls for a round's replies (Flower's HTTP grid: 3)."""


class PromptGrid(Grid):
    """``inner`` with a ``send_and_receive`` that pulls replies every ``poll_s`` seconds."""

    def __init__(self, inner: Grid, poll_s: float = POLL_S) -> None:
        self.inner, self.poll_s = inner, poll_s

    def set_run(self, run: Run) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        return self.inner.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push ``messages``, then pull their replies until all are in or ``timeout`` seconds have passed."""
        waiting = set(self.push_messages(messages))
        end = time.time() + (timeout or 0.0)
        replies: list[Message] = []
        while timeout is None or time.time() < end:
            arrived = list(self.pull_messages(waiting))
            replies.extend(arrived)
            waiting.difference_update(m.metadata.reply_to_message_id for m in arrived)
            if not waiting:
                break
            time.sleep(self.poll_s)
        return replies
