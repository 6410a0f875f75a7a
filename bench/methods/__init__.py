"""Post-training methods; each module registers its method in ``bench.registry.METHODS``."""
