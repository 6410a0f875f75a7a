"""The reporting layer: leaderboard, tables, figures and the HTML page, built from the store alone."""
