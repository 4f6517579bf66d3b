"""``python -m benchmark tune``: equal-budget hyperparameter search on a validation split.

:mod:`.split` carves the tuning data (the train split only: validation images as queries,
the rest as database; the test split is never loaded), :mod:`.space` turns a method's
``search_space`` into Optuna suggestions, :mod:`.study` runs the seeded TPE studies (stored
in SQLite beside the results, so a killed tune resumes) and writes the config file that
``run --config`` takes.
"""
