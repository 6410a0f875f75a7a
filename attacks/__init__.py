"""Attacks: one module (or package) per family; each registers itself in ``bench.api.registry.ATTACKS``."""
