"""Client-side state, carried between the ClientApp's copy of a run and the server's.

A defense object lives in every process that builds the run: the ClientApp's copy trains, the
server's copy accounts (``privacy()`` after the run). What training changes on the client's copy must
reach the server's, or a DP ledger would report zero steps. Three kinds are carried, generically
(by what ``Defense`` declares, never by a defense's name):

- the ``ledger`` (``Defense.ledger``, a ``PrivacyLedger``): the job's new entries, replayed with ``record``;
- the ``audit`` (``Defense.audit``, a ``PrivacyAudit``: dp-local's canaries, which of them were
  included, their losses before and after): the whole object, both ways. The server's copy goes down
  with every message (``downlink``) and comes back when a job changed it: a job continues the audit
  where the audited client's previous job left it, whichever process ran that one (deployment runs
  each message in a fresh process; simulation's actors serve any SuperNode);
- plain scalar attributes the job changed (e.g. dp-local's resolved ``mode``; last job wins).

The run's ``Transcript`` has a client-side part too: a closed tier's provider log and the egress
counters are written while a client trains (the provider's endpoint is called from the client's job).
``transcript_changes`` carries what a job added to every field but the server's ``rounds``: new
items of a list, the increase of a counter; ``extend_transcript`` appends them on the server's copy.
The carried provider log holds client text: it travels in the reply only and is never logged.
"""

from __future__ import annotations

import dataclasses
import pickle
from typing import TypeAlias

from bench.api.defense import Defense, PrivacyAudit
from bench.api.transcript import ProviderRecord, Transcript

SCALARS = (str, int, float, bool, type(None))
Scalar: TypeAlias = str | int | float | bool | None
Entries: TypeAlias = list[tuple[float, float, int]]
State: TypeAlias = dict[str, Scalar | dict[int, Entries] | bytes | PrivacyAudit]
"""A defense's carried state: scalar attributes by name, under ``__ledger__`` the ledger's entries per unit,
under ``__audit__`` the audit (its pickled bytes in a ``snapshot``, the object in ``changes``/``downlink``)."""

OBJECTS = {"ledger": "__ledger__", "audit": "__audit__"}
"""The state objects ``Defense`` declares, carried by their own rule (never as scalars), and their keys."""
SERVER_SIDE = ("rounds",)
"""Transcript fields only the server writes (what it received each round); every other field is client-side."""
TranscriptChanges: TypeAlias = dict[str, list[ProviderRecord] | int]


def snapshot(defense: Defense) -> State:
    """The defense's carried state before a job: its scalars, a copy of its ledger's histories, its audit's bytes."""
    state: State = {k: v for k, v in vars(defense).items() if isinstance(v, SCALARS) and k not in OBJECTS}
    ledger = defense.ledger
    if ledger is not None:
        state["__ledger__"] = {unit: list(history) for unit, history in ledger.histories.items()}
    if defense.audit is not None:
        state["__audit__"] = pickle.dumps(defense.audit)
    return state


def changes(defense: Defense, before: State) -> State:
    """What a job changed: scalars that differ, per unit the ledger entries as (z, q, steps) added, and the
    audit when it differs (a job of a client the audit does not follow leaves it alone and must not send
    back the copy it started from: it would undo the audited client's job when replayed after it)."""
    after = snapshot(defense)
    changed: State = {k: v for k, v in after.items() if k not in OBJECTS.values() and before.get(k, object()) != v}
    if "__ledger__" in after:
        added = {}
        for unit, history in after["__ledger__"].items():
            old = before.get("__ledger__", {}).get(unit, [])
            added[unit] = _added(old, history)
        changed["__ledger__"] = {u: entries for u, entries in added.items() if entries}
    if after.get("__audit__") != before.get("__audit__"):
        changed["__audit__"] = defense.audit
    return changed


def _added(old: Entries, new: Entries) -> Entries:
    """Entries of ``new`` beyond ``old``; the last old entry may have grown (Ledger merges equal (z, q))."""
    if not old:
        return list(new)
    grown = new[len(old) - 1]
    extra = [(grown[0], grown[1], grown[2] - old[-1][2])] if grown[2] != old[-1][2] else []
    return extra + list(new[len(old) :])


def apply(defense: Defense, changed: State) -> None:
    """Replay a client job's ``changes`` (or the server's ``downlink``) on this process's copy of the defense."""
    for key, value in changed.items():
        if key == "__ledger__":
            for unit, entries in value.items():
                for z, q, steps in entries:
                    defense.ledger.record(int(unit), z, q, steps)
        elif key == "__audit__":
            defense.audit = value
        else:
            setattr(defense, key, value)


def downlink(defense: Defense) -> State:
    """What a client's job continues from, sent with each message: the server's audit (None before the
    audited client's first job). The ledger is not sent: only the server's copy accounts, so a client's
    copy needs none of the entries other processes recorded."""
    return {"__audit__": defense.audit}


def transcript_mark(transcript: Transcript) -> TranscriptChanges:
    """Where the transcript's client-side fields stand before a job: each list's length, each counter."""
    return {name: _mark(getattr(transcript, name), name) for name in _client_side()}


def transcript_changes(transcript: Transcript, mark: TranscriptChanges) -> TranscriptChanges:
    """What a job added since ``mark``: a list's new items (in the order the job wrote them), a counter's increase."""
    added: TranscriptChanges = {}
    for name in _client_side():
        value, old = getattr(transcript, name), mark[name]
        added[name] = list(value[old:]) if isinstance(value, list) else value - old
    return added


def extend_transcript(transcript: Transcript, added: TranscriptChanges) -> None:
    """Append a client job's ``transcript_changes`` to this copy (lists extended in place: views hold them)."""
    for name, value in added.items():
        if isinstance(value, list):
            getattr(transcript, name).extend(value)
        else:
            setattr(transcript, name, getattr(transcript, name) + value)


def _client_side() -> list[str]:
    return [f.name for f in dataclasses.fields(Transcript) if f.name not in SERVER_SIDE]


def _mark(value: list[ProviderRecord] | int, name: str) -> int:
    if isinstance(value, list):
        return len(value)
    if isinstance(value, int):
        return value
    raise TypeError(f"Transcript.{name}: no rule carries a {type(value).__name__} from a client to the server")
