"""Responsible federated post-training: screening (``safety-filter``) and self-revision (``constitutional``)
of each client's training data, both judged by the local judge of ``bench.api.safety``."""
