"""Training-data and PII extraction attacks (attacks/extraction/*.py: each module cites its paper)."""
