"""Privacy accounting as objects: an accountant contract, and the typed report a defense gives after a run.

``Accountant`` follows Opacus' ``IAccountant`` (``opacus/accountants/accountant.py``): it keeps the
composed history of subsampled Gaussian mechanisms as ``(noise_multiplier, sample_rate, steps)``
(``step`` appends one step and merges it into the last entry when (z, q) repeats, as Opacus does),
names its ``mechanism``, and answers ``get_epsilon(delta)`` for the whole history. The shipped
accountants (``rdp``, ``prv``, ``rdp-wor``) are in ``defenses/dp/accountants.py``.

``PrivacyAccounting`` is what ``Defense.privacy`` reports, field by field with its type, the stored
metric name and the direction that name is stored with. It is a read-only mapping from those names to
the values present, in a fixed order, so a report given as the keyed ``PrivacyReport`` dict and the
same report given as this object store the same rows in the same order (``bench.engine.runner``).
"""

from __future__ import annotations

import abc
import dataclasses
import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, TypeAlias

History: TypeAlias = list[tuple[float, float, int]]
"""Composed steps as ``(noise_multiplier, sample_rate, steps)``, in order (Opacus' ``accountant.history``)."""
PrivacyValue: TypeAlias = float | int | str


class Accountant(abc.ABC):
    """Composes the privacy loss of subsampled Gaussian mechanisms and converts it to (epsilon, delta)."""

    def __init__(self, history: History | None = None) -> None:
        self.history: History = list(history or [])

    @classmethod
    @abc.abstractmethod
    def mechanism(cls) -> str:
        """The accountant's name (``rdp``, ``prv``, ``rdp-wor``): what ``dp.accountant`` stores."""

    @abc.abstractmethod
    def get_epsilon(self, delta: float) -> float:
        """Epsilon of the whole history at ``delta``; 0 for an empty history, inf when a step had no noise."""

    def step(self, *, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Compose ``steps`` more steps of the subsampled Gaussian mechanism (merged with the last entry when
        its (z, q) is the same)."""
        if steps <= 0:
            return
        if self.history and self.history[-1][0] == noise_multiplier and self.history[-1][1] == sample_rate:
            z, q, n = self.history[-1]
            self.history[-1] = (z, q, n + steps)
        else:
            self.history.append((noise_multiplier, sample_rate, steps))

    def __len__(self) -> int:
        """Steps composed so far."""
        return sum(n for _, _, n in self.history)


def _key(name: str, *, higher_is_better: bool = True) -> dict[str, object]:
    return {"key": name, "higher_is_better": higher_is_better}


@dataclass(frozen=True, kw_only=True)
class PrivacyAccounting(Mapping[str, PrivacyValue]):
    """A defense's privacy report after a run; a field left None is one the defense does not measure.

    Numbers become metric rows with the direction declared here, text goes to the run's ``extra``. The
    directions are the ones the rows were always stored with (``dp.audit_epsilon``, the accountant's epsilon
    of the audited client, is stored as higher-is-better); changing one changes stored rows."""

    epsilon: float | None = field(default=None, metadata=_key("dp.epsilon", higher_is_better=False))
    """The accountant's epsilon at ``delta`` (for the worst privacy unit)."""
    delta: float | None = field(default=None, metadata=_key("dp.delta"))
    accountant: str | None = field(default=None, metadata=_key("dp.accountant"))
    """The accountant's ``mechanism()``."""
    level: str | None = field(default=None, metadata=_key("dp.level"))
    """The privacy unit: ``record``, ``user`` or ``client``."""
    noise_multiplier: float | None = field(default=None, metadata=_key("dp.noise_multiplier"))
    clip_norm: float | None = field(default=None, metadata=_key("dp.clip_norm"))
    sampling_rate: float | None = field(default=None, metadata=_key("dp.sampling_rate"))
    steps: int | None = field(default=None, metadata=_key("dp.steps"))
    grad_sample_mode: str | None = field(default=None, metadata=_key("dp.grad_sample_mode"))
    noise_at: str | None = field(default=None, metadata=_key("dp.noise_at"))
    sampling: str | None = field(default=None, metadata=_key("dp.sampling"))
    neighbouring: str | None = field(default=None, metadata=_key("dp.neighbouring"))
    epsilon_lower: float | None = field(default=None, metadata=_key("dp.epsilon_lower", higher_is_better=False))
    """An audit's empirical lower bound on epsilon."""
    audit_epsilon: float | None = field(default=None, metadata=_key("dp.audit_epsilon"))
    audit_canaries: int | None = field(default=None, metadata=_key("dp.audit_canaries"))
    audit_included: int | None = field(default=None, metadata=_key("dp.audit_included"))
    scrubbed_items: int | None = field(default=None, metadata=_key("privacy.scrubbed_items", higher_is_better=False))
    residual_pii_fraction: float | None = field(
        default=None, metadata=_key("privacy.residual_pii_fraction", higher_is_better=False))
    revised_records: int | None = field(default=None, metadata=_key("safety.revised_records"))
    """constitutional: records critiqued and revised."""
    revision_refusal_rate: float | None = field(default=None, metadata=_key("safety.revision_refusal_rate"))
    revision_compliance_rate: float | None = field(default=None, metadata=_key("safety.revision_compliance_rate"))
    revision_dropped: int | None = field(default=None, metadata=_key("safety.revision_dropped"))
    filtered_fraction: float | None = field(default=None, metadata=_key("safety.filtered_fraction"))
    """safety-filter: the fraction of the records it dropped."""
    filtered_records: int | None = field(default=None, metadata=_key("safety.filtered_records"))
    undeclared: tuple[tuple[str, PrivacyValue], ...] = ()
    """Keys a defense reports that no field declares (a plugin's own measure), in its order, after the
    declared ones; stored with the direction ``higher_is_better`` gives an undeclared key."""

    FIELDS: ClassVar[dict[str, str]] = {}
    """Stored name -> field name (filled below)."""

    @classmethod
    def of(cls, report: Mapping[str, PrivacyValue]) -> PrivacyAccounting:
        """The typed report of a keyed one (``PrivacyReport``); keys no field declares are kept, in order."""
        if isinstance(report, PrivacyAccounting):
            return report
        declared = {cls.FIELDS[k]: v for k, v in report.items() if k in cls.FIELDS}
        return cls(**declared, undeclared=tuple((k, v) for k, v in report.items() if k not in cls.FIELDS))

    @staticmethod
    def higher_is_better(key: str) -> bool:
        """The direction the stored metric ``key`` carries: its field's; for an undeclared key, the rule the
        runner always applied (an epsilon and the ``privacy.*`` leakage measures are lower-is-better)."""
        if key in _METADATA:
            return bool(_METADATA[key]["higher_is_better"])
        return not key.startswith(("dp.epsilon", "privacy."))

    def __getitem__(self, key: str) -> PrivacyValue:
        value = getattr(self, self.FIELDS[key]) if key in self.FIELDS else dict(self.undeclared).get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[str]:
        declared = (f.metadata["key"] for f in dataclasses.fields(self)
                    if "key" in f.metadata and getattr(self, f.name) is not None)
        return itertools.chain(declared, (k for k, _ in self.undeclared))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    @property
    def unbounded(self) -> bool:
        """True when the report claims no finite guarantee (an epsilon of inf)."""
        return self.epsilon is not None and math.isinf(self.epsilon)


_METADATA = {f.metadata["key"]: f.metadata for f in dataclasses.fields(PrivacyAccounting) if "key" in f.metadata}
PrivacyAccounting.FIELDS.update({f.metadata["key"]: f.name for f in dataclasses.fields(PrivacyAccounting)
                                 if "key" in f.metadata})
