"""Reports generated from records: leaderboard tables, plots, quoted paper rows, the index,
and writing or checking a leaderboard folder."""
