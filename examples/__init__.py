"""Examples that a test runs (tests/test_flower_observe.py)."""
