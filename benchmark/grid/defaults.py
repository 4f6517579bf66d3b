"""The default grid: what ``make leaderboard`` runs and the index describes."""

#: the grid ``make leaderboard`` runs (README and index text; the Makefile takes its methods
#: from ``list --default-grid``): the baselines, the sanity baselines and thesis-sld (the one
#: thesis method on pooled features). Ablation variants and the thesis methods that read
#: stage maps (thesis-msd, -mad, -ddl: far costlier per run on a CPU) are measured in
#: leaderboards/thesis and leaderboards/ablations. ``config`` is the equal-budget tune's output
#: (``python -m benchmark tune``, on a validation split of cub100's train split) that every
#: default-grid run takes (``run --config``); the file's header says how it was made.
DEFAULT_GRID = {"dataset": "cub100", "regime": "frozen", "bits": (12, 24, 32, 48),
                "seeds": (0, 1, 2, 3, 4), "config": "configs/default-grid.yaml",
                "methods": ("lsh", "itq", "dsh", "dpsh", "hashnet", "greedyhash", "csq",
                            "orthohash", "fish", "a2net", "a2netpp", "cmbh", "thesis-sld")}
