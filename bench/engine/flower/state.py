"""Client-side state of defenses, carried back to the server's copies.

A defense object lives in every process that builds the run: the ClientApp's copy trains, the
server's copy accounts (``privacy()`` after the run). What training changes on the client's copy must
reach the server's, or a DP ledger would report zero steps. Two kinds are carried, generically:
the ``ledger`` every defense declares (``Defense.ledger``, a ``PrivacyLedger``: the job's new entries
are replayed with ``record``) and plain scalar attributes the job changed (e.g. dp-local's resolved
``mode``). Nothing else is carried: a defense keeping a client-side ``audit`` (dp-local's canaries)
is not supported under Flower, and the ClientApp refuses it.
"""

from __future__ import annotations

from typing import TypeAlias

from bench.api.defense import Defense

SCALARS = (str, int, float, bool, type(None))
Scalar: TypeAlias = str | int | float | bool | None
Entries: TypeAlias = list[tuple[float, float, int]]
State: TypeAlias = dict[str, Scalar | dict[int, Entries]]
"""A defense's carried state: scalar attributes by name, and under ``__ledger__`` the ledger's entries per unit."""


def snapshot(defense: Defense) -> State:
    """The defense's carried state before a job: its scalars and a copy of its ledger's histories."""
    state: State = {k: v for k, v in vars(defense).items() if isinstance(v, SCALARS)}
    ledger = defense.ledger
    if ledger is not None:
        state["__ledger__"] = {unit: list(history) for unit, history in ledger.histories.items()}
    return state


def changes(defense: Defense, before: State) -> State:
    """What a job changed: scalars that differ, and per unit the ledger entries as (z, q, steps) added."""
    after = snapshot(defense)
    changed = {k: v for k, v in after.items() if k != "__ledger__" and before.get(k, object()) != v}
    if "__ledger__" in after:
        added = {}
        for unit, history in after["__ledger__"].items():
            old = before.get("__ledger__", {}).get(unit, [])
            added[unit] = _added(old, history)
        changed["__ledger__"] = {u: entries for u, entries in added.items() if entries}
    return changed


def _added(old: Entries, new: Entries) -> Entries:
    """Entries of ``new`` beyond ``old``; the last old entry may have grown (Ledger merges equal (z, q))."""
    if not old:
        return list(new)
    grown = new[len(old) - 1]
    extra = [(grown[0], grown[1], grown[2] - old[-1][2])] if grown[2] != old[-1][2] else []
    return extra + list(new[len(old):])


def apply(defense: Defense, changed: State) -> None:
    """Replay a client job's ``changes`` on the server's copy of the defense."""
    for key, value in changed.items():
        if key == "__ledger__":
            for unit, entries in value.items():
                for z, q, steps in entries:
                    defense.ledger.record(int(unit), z, q, steps)
        else:
            setattr(defense, key, value)
