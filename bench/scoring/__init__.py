"""One scorer module per prediction type (see ``bench.scoring.score``)."""
