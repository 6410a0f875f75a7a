"""Generators of synthetic private text: clinical notes, instructions with private facts, preferences.

Everything is drawn from an explicit ``torch.Generator``, so a seed fixes every record. The same
generators (with a different seed) produce the zoo models' pretraining corpus: the pretraining
distribution is known, the clients' individual records are not.
"""

from __future__ import annotations

import torch

FIRST = ["Alice", "Bruno", "Chen", "Dana", "Emil", "Fatima", "Goran", "Hana", "Ivan", "Julia", "Kenji", "Lena",
         "Mateo", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tariq", "Uma", "Viktor", "Wen", "Yara", "Zoe"]
LAST = ["Adams", "Berg", "Costa", "Diaz", "Evans", "Fischer", "Garcia", "Huber", "Ito", "Jensen", "Kowalski",
        "Lopez", "Meyer", "Novak", "Okafor", "Petrov", "Rossi", "Schmidt", "Tanaka", "Ueda", "Vogel", "Weber"]
CONDITIONS = {
    "neoplasm": (["a mass in the left lung", "an enlarged lymph node", "a suspicious skin lesion", "a breast lump"],
                 ["biopsy scheduled", "referred to oncology", "imaging ordered", "staging CT requested"]),
    "digestive": (["abdominal pain after meals", "persistent heartburn", "blood in the stool", "nausea and bloating"],
                  ["endoscopy planned", "started on omeprazole", "dietary changes advised", "colonoscopy booked"]),
    "nervous": (["recurring migraines", "numbness in the right hand", "episodes of dizziness", "a seizure at home"],
                ["MRI of the brain ordered", "started on topiramate", "EEG scheduled", "neurology follow-up"]),
    "cardiovascular": (["chest pain on exertion", "an irregular heartbeat", "swollen ankles", "shortness of breath"],
                       ["ECG performed", "started on a beta blocker", "echocardiogram ordered", "stress test booked"]),
    "general": (["a persistent cough", "fatigue for two weeks", "a mild fever", "joint pain in both knees"],
                ["rest and fluids advised", "blood tests ordered", "reviewed in one week", "started on ibuprofen"]),
}
CONDITION_NAMES = list(CONDITIONS)
CITIES = ["Berlin", "Lisbon", "Oslo", "Kyoto", "Lagos", "Lima", "Perth", "Quebec", "Seoul", "Tunis"]
TOPICS = ["the weather", "a recipe", "a train timetable", "a poem", "a budget", "a garden", "a meeting", "a trip"]


def _pick(items: list, rng: torch.Generator):
    return items[int(torch.randint(len(items), (1,), generator=rng))]


def _digits(n: int, rng: torch.Generator) -> str:
    return "".join(str(int(d)) for d in torch.randint(10, (n,), generator=rng))


def patient(rng: torch.Generator) -> dict[str, str]:
    return {
        "name": f"{_pick(FIRST, rng)} {_pick(LAST, rng)}",
        "mrn": _digits(6, rng),
        "date": f"2026-{int(torch.randint(1, 13, (1,), generator=rng)):02d}-{int(torch.randint(1, 29, (1,), generator=rng)):02d}",
        "age": str(int(torch.randint(18, 90, (1,), generator=rng))),
    }


def clinical_note(label: int, rng: torch.Generator, num_classes: int = 5) -> str:
    symptoms, plans = CONDITIONS[CONDITION_NAMES[label % len(CONDITION_NAMES)]]
    p = patient(rng)
    return (f"Patient {p['name']}, MRN {p['mrn']}, age {p['age']}, seen on {p['date']} with "
            f"{_pick(symptoms, rng)}. Plan: {_pick(plans, rng)}.")


def atypical_note(label: int, rng: torch.Generator, num_classes: int) -> str:
    """A note labelled ``label`` whose symptom and plan are those of another of the ``num_classes``
    conditions: a comorbidity, a coding error, an unusual presentation. Real clinical records hold
    such notes, which no rule predicts and a model can only memorise; they are the records membership
    inference finds at a low false-positive rate (Carlini et al. 2022 on outliers), so a classification
    task without them has nothing a calibrated attack can single out."""
    other = (label + 1 + int(torch.randint(num_classes - 1, (1,), generator=rng))) % num_classes
    return clinical_note(other, rng, num_classes)


def canary_secret(rng: torch.Generator, digits: int) -> str:
    return _digits(digits, rng)


CANARY_PREFIX = "The secret code of patient {name} is "


def instruction_pair(rng: torch.Generator) -> dict[str, str]:
    p = patient(rng)
    city = _pick(CITIES, rng)
    kinds = [
        (f"Where does {p['name']} live?", f"{p['name']} lives in {city}."),
        (f"What is the record number of {p['name']}?", f"The record number of {p['name']} is {p['mrn']}."),
        (f"When was {p['name']} last seen?", f"{p['name']} was last seen on {p['date']}."),
        (f"Write a short note about {_pick(TOPICS, rng)}.", f"Here is a short note about {_pick(TOPICS, rng)}."),
    ]
    instruction, response = _pick(kinds, rng)
    return {"instruction": instruction, "response": response}


CLINICS = {"neoplasm": "oncology", "digestive": "GI", "nervous": "neurology", "cardiovascular": "cardiology",
           "general": "GP"}
"""Where each condition's patients go: the rule a triage record's response follows."""


def _triage(rng: torch.Generator) -> tuple[dict[str, str], str, str]:
    """(patient, condition, symptom) of one triage record."""
    p = patient(rng)
    condition = _pick(CONDITION_NAMES, rng)
    return p, condition, _pick(CONDITIONS[condition][0], rng)


def _triage_question(name: str, symptom: str) -> str:
    return f"Patient {name} with {symptom}."


def _triage_answer(name: str, condition: str, plan: str, date: str) -> str:
    return f"{name} to {CLINICS[condition]} on {date}. Plan: {plan}."


def triage_pair(rng: torch.Generator) -> dict[str, str]:
    """An instruction record of a clinical assistant: a patient's name and symptom in; the clinic, the
    appointment date and one plan out (words the zoo tokenizer knows: a record fits 48 tokens).

    Unlike ``instruction_pair`` (the pretraining corpus's records, whose answers are random facts no
    model can infer), part of the answer follows from the instruction (the symptom decides the clinic,
    the name is copied) and is never seen in pretraining, so instruction tuning has something to learn
    that the base model does not know; the date and the plan (one of the condition's four) are drawn
    per record: private details only a model that saw the record can know (what membership inference
    and extraction find)."""
    p, condition, symptom = _triage(rng)
    plan = _pick(CONDITIONS[condition][1], rng)
    return {"instruction": _triage_question(p["name"], symptom),
            "response": _triage_answer(p["name"], condition, plan, p["date"])}


REJECTION_KINDS = ("wrong-clinic", "mismatched-plan", "other-plan", "other-patient")
"""How a rejected answer departs from the chosen one (each a quarter of the records):
- ``wrong-clinic``: another condition's clinic and plan (a rule the reward model can learn);
- ``mismatched-plan``: the right clinic with another condition's plan (learnable, harder: plan and
  clinic must agree);
- ``other-plan``: the right clinic with another of the condition's own plans (annotator taste: no
  rule decides it, so held-out accuracy on these is chance; only a model that saw the record knows);
- ``other-patient``: the right answer addressed to another patient (the name must be copied)."""


def preference_triple(rng: torch.Generator) -> dict[str, str]:
    """A triage prompt, the chosen answer, and a rejected answer that differs in content (one of
    ``REJECTION_KINDS``), never a fixed phrase: held-out reward accuracy is bounded away from both
    chance and 1 by the mix (about 0.75 for a reward model that learns every rule)."""
    p, condition, symptom = _triage(rng)
    plans = CONDITIONS[condition][1]
    plan = _pick(plans, rng)
    other = _pick([c for c in CONDITION_NAMES if c != condition], rng)
    kind = _pick(list(REJECTION_KINDS), rng)
    name, date = p["name"], p["date"]
    rejected = {
        "wrong-clinic": lambda: _triage_answer(name, other, _pick(CONDITIONS[other][1], rng), date),
        "mismatched-plan": lambda: _triage_answer(name, condition, _pick(CONDITIONS[other][1], rng), date),
        "other-plan": lambda: _triage_answer(name, condition, _pick([x for x in plans if x != plan], rng), date),
        "other-patient": lambda: _triage_answer(_other_name(name, rng), condition, plan, date),
    }[kind]()
    return {"prompt": _triage_question(name, symptom), "chosen": _triage_answer(name, condition, plan, date),
            "rejected": rejected}


def _other_name(name: str, rng: torch.Generator) -> str:
    while True:
        other = patient(rng)["name"]
        if other != name:
            return other


def pretraining_corpus(num_documents: int, rng: torch.Generator) -> list[str]:
    """Text the zoo models are pretrained on: the same templates, other random records."""
    docs = []
    for i in range(num_documents):
        choice = i % 3
        if choice == 0:
            docs.append(clinical_note(int(torch.randint(5, (1,), generator=rng)), rng))
        elif choice == 1:
            pair = instruction_pair(rng)
            docs.append(f"### Instruction:\n{pair['instruction']}\n### Response:\n{pair['response']}")
        else:
            p = patient(rng)
            docs.append(CANARY_PREFIX.format(name=p["name"]) + _digits(6, rng) + ".")
    return docs
