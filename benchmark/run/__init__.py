"""Running the grid: the one training loop, the regimes' input sources, encoding,
validation selection, one run's execution and the grid driver."""
