"""Shared words and formats that several layers must agree on (one definition each).

A constant lives here when a plugin (attack, defense, method) and the engine or reporting both need
it: the plugins may import only the api layer.
"""

from __future__ import annotations

PROMPT_TEMPLATE = "### Instruction:\n{instruction}\n### Response:\n"
"""How an instruction is shown to a model: tasks render with it, methods and poisoning attacks build prompts
with it, utility evaluation generates from it."""

AGGREGATE_CLIENT = -1
"""The client id of a reconstruction from a round's aggregate (the whole round treated as one batch)."""

UTILITY_HEADLINE = ["utility.accuracy", "utility.reward_accuracy", "utility.rouge_l", "utility.exact_match",
                    "utility.likelihood_preference_accuracy"]
"""Headline utility per task kind, first present wins (all higher-is-better): the leaderboard's utility
column and the utility drop derived in the store."""
