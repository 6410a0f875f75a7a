"""inversion attacks."""
