"""Defenses: one module per defense; each registers itself in ``bench.registry.DEFENSES``."""
