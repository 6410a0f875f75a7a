"""TierBench: privacy attacks and defenses in federated post-training, per openness tier."""

__version__ = "0.1.0"
