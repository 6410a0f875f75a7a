"""Parameter sharing: the engine's own FedAvg/FedSGD path (``bench.engine.federation``), unchanged.

These classes only name it: ``shares_parameters`` tells the round loop to run its update hooks,
transport and aggregation rule on flat weight updates, exactly as before protocols existed.
"""

from __future__ import annotations

from bench.api.protocol import Channel, Protocol
from bench.api.registry import PROTOCOLS


@PROTOCOLS.register("fedavg")
class FedAvg(Protocol):
    """Local steps; clients send their new weights as a difference (McMahan et al. 2017)."""

    channel = Channel.PARAMETERS
    shares_parameters = True


@PROTOCOLS.register("fedsgd")
class FedSGD(Protocol):
    """One plain SGD step; clients send the step itself (-lr x gradient)."""

    channel = Channel.PARAMETERS
    shares_parameters = True
    one_step = True
