"""provider attacks."""
