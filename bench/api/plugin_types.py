"""What a plugin is handed of the spec layer, named as Protocols.

Attacks and defenses import only ``bench.api`` (and ``bench.client``), yet they receive world and spec
objects. The model handles and the task are named in ``bench.api.handles`` (``ModelHandle``,
``OpenHandle``, ``TaskSpec``, ``TaskConfig``) and the canaries are ``bench.api.transcript.Canary``; this
module names the rest: the scenario's federation as a channel defense reads it
(``bench.spec.scenario.Federation``). The class the engine passes has each structurally
(``tests/test_plugin_types.py`` checks every pair), so no plugin needs a ``getattr`` fallback to find out.
"""

from __future__ import annotations

from typing import Protocol

from bench.api.transcript import FederationSettings, NamedComponent


class ExchangeSettings(FederationSettings, Protocol):
    """The federation settings of a protocol that shares more than parameters (KD's logits)."""

    @property
    def kd_top_k(self) -> int:
        """Logits shared per row under KD (0: every logit)."""
        ...


class ExchangeScenario(Protocol):
    """What a channel defense (``dp-logits``) reads of the scenario it is planned into."""

    @property
    def federation(self) -> ExchangeSettings: ...

    @property
    def tier(self) -> NamedComponent: ...
