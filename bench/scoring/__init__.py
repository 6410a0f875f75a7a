"""One scorer module per prediction type (see ``bench.score``)."""
