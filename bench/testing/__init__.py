"""Test and benchmark helpers (never imported by the benchmark itself)."""
