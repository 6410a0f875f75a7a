"""Post-training methods; each module registers its method in ``bench.api.registry.METHODS``."""
