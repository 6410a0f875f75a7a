"""The store layer: append-only results, provenance, atomic files, metrics derived from stored runs."""
