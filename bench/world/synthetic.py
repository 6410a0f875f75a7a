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


def preference_triple(rng: torch.Generator) -> dict[str, str]:
    pair = instruction_pair(rng)
    rejected = _pick(["I cannot help with that.", "No idea.", "Ask someone else.", "That is not important."], rng)
    return {"prompt": pair["instruction"], "chosen": pair["response"], "rejected": rejected}


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
