"""Provider-side tuning (gray-box): federated training of adapters that the provider trains and hosts.

A gray-box provider offers a tuning endpoint (as hosted fine-tuning APIs do): a client uploads its
training examples and the provider trains an adapter on its side; the client can use the result only
through the provider's API. Federated, each round every sampled client submits a tuning job on its
own data, starting from the current global adapter; the adapter delta is what reaches the server and
goes through the usual transport and defense hooks. The adapters live with the provider, so in
practice the aggregating server is the provider (or trusts it): the ``server`` vantage then sits
with the provider, on top of the ``provider`` vantage's request log.

What this costs in privacy is the point: every training example leaves the client. The trainer logs
each uploaded example in the provider's request log (purpose ``tuning-upload``, with the client id),
which is the ``provider`` vantage, and counts it as egress. Each round's job uploads the client's
whole training set again (a tuning job trains on the file it is given).

The adapter is LoRA (default) or a Houlsby bottleneck adapter, the methods the seed paper marks as
"partially" available at gray-box tiers through the provider.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from bench.api.config import doc
from bench.api.method import Method
from bench.api.registry import METHODS
from bench.methods._common import check_on_skeleton
from bench.methods.adapter import AdapterSettings, adapter_problem, apply_adapters
from bench.methods.lora import LoraSettings, apply_lora, target_problem
from bench.world.tiers import Access, OpenModel, ProviderAPI, record_egress

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from bench.api.defense import Defense
    from bench.api.transcript import Transcript
    from bench.client.training import LocalJob, Trainer  # named in annotations only: transformers loads lazily
    from bench.world.tasks import Task


def _lora(model: nn.Module, settings: ProviderTuningSettings, task: Task, rng: torch.Generator) -> nn.Module:
    return apply_lora(model, settings, task, rng)


def _houlsby(model: nn.Module, settings: ProviderTuningSettings, task: Task, rng: torch.Generator) -> nn.Module:
    return apply_adapters(model, settings, task, rng)


PROVIDER_ADAPTERS: dict[str, Callable[[nn.Module, ProviderTuningSettings, Task, torch.Generator], nn.Module]] = {
    "lora": _lora, "houlsby": _houlsby}


@dataclass(frozen=True, kw_only=True)
class ProviderTuningSettings(LoraSettings, AdapterSettings):
    adapter: str = doc("Adapter the provider trains: 'lora' (rank/alpha/target apply) or 'houlsby' (size/activation).",
                       "lora")

    def __post_init__(self) -> None:
        LoraSettings.__post_init__(self)
        AdapterSettings.__post_init__(self)
        if self.adapter not in PROVIDER_ADAPTERS:
            raise ValueError(f"adapter must be one of {', '.join(PROVIDER_ADAPTERS)}")


def replaces_training(defense: Defense) -> bool:
    """True for defenses that run their own trainer instead of the one given (record-level DP-SGD)."""
    return bool(defense.replaces_training)


@METHODS.register("provider-tuning")
class ProviderTuning(Method):
    """Gray-box: clients upload their data to the provider's tuning endpoint; the provider trains an adapter."""

    Config = ProviderTuningSettings
    needs = frozenset({Access.PROVIDER_TUNING})

    def build(self, model: nn.Module, task: Task, rng: torch.Generator) -> nn.Module:
        self.task = task
        return PROVIDER_ADAPTERS[self.config.adapter](model, self.config, task, rng)

    def check_model(self, architecture: PretrainedConfig | None, task_kind: str) -> str | None:
        problem = target_problem if self.config.adapter == "lora" else adapter_problem
        return check_on_skeleton(architecture, task_kind, lambda model: problem(model, self.config))

    def check_compatible(self, defenses: list[Defense]) -> str | None:
        for defense in defenses:
            if replaces_training(defense):
                return (f"{defense.name} replaces the client's trainer, but with provider-tuning the provider trains "
                        "(client-side record-level DP is not modelled for provider-side tuning)")
        return None

    def grants(self) -> frozenset[Access]:
        return self.tier.grants if self.tier is not None else self.needs

    def trainer(self, default: Trainer, transcript: Transcript) -> Trainer:
        def tune_at_provider(job: LocalJob) -> dict[str, float]:
            api = ProviderAPI(OpenModel(job.model, None, self.task, None), self.grants(), transcript.provider_log,
                              client=job.client)
            record_egress(transcript, [self.task.text_of(e) for e in job.examples])
            return api.tune(job, default)

        return tune_at_provider
