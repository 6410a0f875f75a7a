"""Byzantine-robust aggregation: pure rules (``rules``) and their registered defenses (``aggregators``)."""
