"""Defenses: one module per defense; each registers itself in ``bench.api.registry.DEFENSES``."""
