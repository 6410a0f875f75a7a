"""Shared words and formats that several layers must agree on (one definition each).

A constant lives here when a plugin (attack, defense, method) and the engine or reporting both need
it: the plugins may import only the api layer.
"""

from __future__ import annotations

import enum
from typing import TypeAlias, Union

# The words of the design (DESIGN.md's vocabulary). Each is a ``StrEnum``: a member equals its string,
# so YAML, stored rows and existing comparisons keep working while code moves from bare strings to them.


class TierName(enum.StrEnum):
    """The openness tiers (registered in ``bench.world.tiers``)."""

    OPEN_SOURCE = "open-source"
    OPEN_WEIGHT = "open-weight"
    GRAY_BOX = "gray-box"
    BLACK_BOX = "black-box"


class Vantage(enum.StrEnum):
    """Where an attacker stands."""

    SERVER = "server"
    AGGREGATE = "aggregate"
    PARTICIPANT = "participant"
    EXTERNAL = "external"
    PROVIDER = "provider"


class TaskKind(enum.StrEnum):
    """What a task trains (``Task.kind``); methods and attacks declare the kinds they handle."""

    CLASSIFICATION = "classification"
    LANGUAGE = "language"
    INSTRUCTION = "instruction"
    PREFERENCE = "preference"


class RunStatus(enum.StrEnum):
    """A result row's ``status``."""

    OK = "ok"
    FAILED = "failed"
    INCOMPATIBLE = "incompatible"
    NOT_APPLICABLE = "not-applicable"
    """An attack the tier or the task rules out once the run has trained (its other rows are ``ok``)."""


class AttackFamily(enum.StrEnum):
    """The family an attack's metrics belong to (a Byzantine attack is scored as poisoning)."""

    MIA = "mia"
    INVERSION = "inversion"
    POISON = "poison"
    EXTRACTION = "extraction"


class AttackRole(enum.StrEnum):
    """The role an attack plays in Table 4: its family, with poisoning split by how it poisons (a
    backdoor-style attack rewrites data or replaces the model; a Byzantine one crafts updates)."""

    MIA = "mia"
    INVERSION = "inversion"
    MALICIOUS_INVERSION = "malicious-inversion"
    """Inversion by a server that also chooses what clients train from (a stronger threat model than the
    honest-but-curious server of ``INVERSION``): its own Table 4 cells, never paired with honest runs."""
    BACKDOOR = "backdoor"
    BYZANTINE = "byzantine"
    EXTRACTION = "extraction"


class DefenseFamily(enum.StrEnum):
    """The family a defense belongs to (``Defense.family``): what the reports compare it as (the paper's
    Table 4 marks are per family). The words are the ones the reports print."""

    DP = "DP"
    SECAGG = "SecAgg"
    HE = "HE"
    ROBUST_AGGREGATION = "robust aggregation"
    PII_SCRUBBING = "PII scrubbing"
    SAFETY = "safety alignment"
    """Data-side defenses against harmful fine-tuning (a safety filter, constitutional revision)."""
    ACTIVATION_NOISE = "activation noise"
    """Noise on split learning's cut-layer activations, with no formal DP guarantee."""


JsonValue: TypeAlias = Union[str, int, float, bool, None, list["JsonValue"], dict[str, "JsonValue"]]  # noqa: UP007
"""A value that survives JSON: what result rows, their ``extra``, scenario documents and stored
configurations hold (the store writes them as JSON lines, the loader reads YAML into them)."""
JsonObject: TypeAlias = dict[str, JsonValue]
"""A JSON object: one result row, a row's ``extra``, a scenario document."""
Record: TypeAlias = JsonObject
"""One example of a task's data (``text``/``label``, ``instruction``/``response``, ``prompt``/``chosen``/
``rejected``, ...): read from JSON, CSV or generated, handed to clients, attacks and evaluation."""


PROMPT_TEMPLATE = "### Instruction:\n{instruction}\n### Response:\n"
"""How an instruction is shown to a model: tasks render with it, methods and poisoning attacks build prompts
with it, utility evaluation generates from it."""

AGGREGATE_CLIENT = -1
"""The client id of a reconstruction from a round's aggregate (the whole round treated as one batch)."""

UTILITY_HEADLINE = ["utility.accuracy", "utility.reward_accuracy", "utility.rouge_l", "utility.exact_match",
                    "utility.likelihood_preference_accuracy"]
"""Headline utility per task kind, first present wins (all higher-is-better): the leaderboard's utility
column and the utility drop derived in the store."""
