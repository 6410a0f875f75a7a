"""mia attacks."""
