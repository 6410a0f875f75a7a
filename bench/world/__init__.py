"""The world layer: openness tiers, the model zoo, tasks and their data, client partitions."""
