"""What TierBench's strategy and ClientApp say to each other, in Flower's records.

One message per SuperNode and round. Server -> node (message type ``train``): ``global`` (ArrayRecord:
the flat trainable state) and ``job`` (ConfigRecord: round, the clients the node hosts, seed and the
pickled scenario, from which a client process builds the
same run as the server: same data deal, initialisation and defenses, all keyed on the seed; and the
server's client-side defense state a job continues, e.g. a one-run audit: ``state.downlink``).
Node -> server: ``update`` (ArrayRecord: each client's flat update, keyed by client), ``result.<client>``
(ConfigRecord: the training loss, the token
ids the client trained on — ground truth for scoring, which the transcript never holds — the
client-side state of the defenses, e.g. a DP ledger or an audit, that the server's accounting reads,
and what the job added to the transcript's client-side part: a closed tier's provider log and egress).
Tensors travel as numpy arrays: float32/float64 round-trip bit for bit.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # Flower loads when an engine uses it
    from flwr.app import Array, ArrayRecord

GLOBAL, JOB, UPDATE, RESULT, STATE = "global", "job", "update", "result", "state"


def to_array(tensor: torch.Tensor) -> Array:
    from flwr.app import Array

    return Array.from_numpy_ndarray(np.ascontiguousarray(tensor.detach().cpu().numpy()))


def from_array(array: Array, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.from_numpy(np.array(array.numpy(), copy=True)).to(device)


def flat_record(tensor: torch.Tensor, key: str = STATE) -> ArrayRecord:
    from flwr.app import ArrayRecord

    return ArrayRecord({key: to_array(tensor)})


def flat_of(record: ArrayRecord, key: str = STATE, device: torch.device | str = "cpu") -> torch.Tensor:
    return from_array(record[key], device)


def dump_batches(batches: list[list[int]] | None) -> str:
    return json.dumps(batches)


def load_batches(text: str) -> list[list[int]] | None:
    return json.loads(text)
