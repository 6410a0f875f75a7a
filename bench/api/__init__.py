"""The api layer: registry, configs, errors, seeding and the types every component shares (bases, transcript, predictions)."""
