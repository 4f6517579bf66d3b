"""``python -m benchmark tune``: equal budget, validation only, resumable, a config that
``run --config`` takes."""
import json
import sqlite3

import numpy as np
import optuna
import pytest

from benchmark.cli import main
from benchmark.data import build_dataset
from benchmark.errors import BenchmarkError
from benchmark.tune import split as tune_split
from benchmark.tune.space import suggest
from benchmark.tune.study import STORAGE_FILE, TuneRequest, open_study, tune

QUICK = dict(dataset="synthetic-fg", bits=8, input_size=32, epoch_cap=1, val_frac=0.25)


def _records(out):
    rows = sqlite3.connect(out / "results.sqlite").execute(
        "SELECT method, spec, protocol, metrics FROM runs WHERE status = 'ok'").fetchall()
    return [(m, json.loads(s), json.loads(p), json.loads(x)) for m, s, p, x in rows]


def _studies(out):
    storage = f"sqlite:///{out / STORAGE_FILE}"
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage)
            for s in optuna.get_all_study_summaries(storage)}


def test_tune_gives_every_method_the_same_budget_and_a_config_run_takes(tmp_path, cache_dir,
                                                                         capsys):
    out = tmp_path / "tune"
    chosen = tune(TuneRequest(methods=["dsh", "csq"], trials=2, out=out, cache_dir=cache_dir,
                              **QUICK), log=lambda *_: None)
    for method, result in chosen.items():
        rule = result["selection"]
        assert (rule["trials"], rule["epoch_cap"], rule["objective"]) == (2, 1, "map_tie_aware")
        assert rule["split"]["val_frac"] == 0.25 and result["hparams"]["epochs"] == 1
    for study in _studies(out).values():
        trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert len(trials) == 2
    records = _records(out)
    assert len(records) >= 3 and all(s["tuning"]["objective"] == "map_tie_aware" for _, s, _, _ in records)
    assert all(s["train"]["epochs"] <= 1 for _, s, _, _ in records)
    # a trial is a run: val queries against the rest of train, on the tuning set
    dataset = tune_split.tuning_set(build_dataset("synthetic-fg"), 0.25, 0)
    for _, spec, protocol, _ in records:
        assert spec["dataset"] == dataset.name
        counts = protocol["materialised"]["counts"]
        assert counts["query"] == (~dataset.is_train).sum() and counts["database"] == dataset.is_train.sum()
    # the leaderboard leaves trials out; run --config records the selection rule
    assert main(["leaderboard", "--results", str(out), "--out", str(tmp_path / "board")]) == 2
    assert "no runs" in capsys.readouterr().err  # every record there is a trial
    run_out = tmp_path / "run"
    assert main(["run", "--methods", "dsh", "--dataset", "synthetic-fg", "--input-size", "32",
                 "--bits", "8", "--no-progress", "--out", str(run_out), "--cache-dir", str(cache_dir),
                 "--config", str(out / "tuned.yaml")]) == 0
    (_, spec, _, _), = _records(run_out)
    assert spec["selection"] == chosen["dsh"]["selection"] and "tuning" not in spec
    assert spec["train"]["epochs"] == 1
    # the page's training-setup table says how the hyperparameters were chosen
    assert main(["leaderboard", "--results", str(run_out), "--out", str(tmp_path / "board")]) == 0
    page = (tmp_path / "board" / "synthetic-fg.md").read_text()
    best = chosen["dsh"]["selection"]["best_value"]
    assert (f"hyperparameters tuned: 2 trials on synthetic-fg validation (val_frac 0.25, 8 bits, "
            f"at most 1 epochs), best val map_tie_aware {best}") in page
    assert "marked *" not in page  # its records name the defaults: only non-default values shown


def test_tuning_never_opens_the_test_split(tmp_path, monkeypatch):
    full = build_dataset("synthetic-fg")
    opened = []

    def load(i):
        opened.append(i)
        return full_load(i)
    full_load = full.load
    full.load = load
    monkeypatch.setattr(tune_split, "build_grid_dataset", lambda *a, **k: full)
    out = tmp_path / "tune"
    tune(TuneRequest(methods=["dsh"], trials=1, out=out, cache_dir=tmp_path / "cache", **QUICK),
         log=lambda *_: None)
    train = set(np.flatnonzero(full.is_train).tolist())
    assert set(opened) == train  # features were made, of every train image and no test image
    (_, _, protocol, _), = _records(out)
    counts = protocol["materialised"]["counts"]
    assert counts["query"] + counts["database"] == len(train)  # queries and database: train only


def test_a_killed_tune_resumes_where_it_stopped(tmp_path, cache_dir):
    out = tmp_path / "tune"
    request = TuneRequest(methods=["dsh"], trials=2, out=out, cache_dir=cache_dir, **QUICK)
    tune(request, log=lambda *_: None)
    runs_before = len(_records(out))
    (name, study), = _studies(out).items()
    from benchmark.method import hparam_defaults
    from benchmark.tune.space import capped, checked_space
    from registry import load_plugins
    cls = load_plugins().methods["dsh"].cls
    space, _ = capped(checked_space(cls, "dsh"), hparam_defaults(cls), 1)
    killed = study.ask()  # a trial that was running when the tune was killed
    killed_values = suggest(killed, space)
    lines = []
    tune(TuneRequest(methods=["dsh"], trials=3, out=out, cache_dir=cache_dir, **QUICK),
         log=lines.append)
    study = _studies(out)[name]
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3
    assert study.trials[killed.number].state == optuna.trial.TrialState.FAIL
    redone = [t for t in study.trials if t.number > killed.number]
    assert redone[0].params == killed_values  # the killed trial's values, asked again
    assert len(_records(out)) == runs_before + 1  # the two finished trials were not re-run
    assert sum("-> val" in line for line in lines) == 1  # one trial ran


def test_tune_refuses_what_it_cannot_tune(tmp_path, capsys):
    with pytest.raises(BenchmarkError, match="lsh: nothing to tune"):
        tune(TuneRequest(methods=["dsh", "lsh"], out=tmp_path, **QUICK))
    assert main(["tune", "--methods", "dsh", "--trials", "0", "--out", str(tmp_path)]) == 2
    assert "--trials must be at least 1" in capsys.readouterr().err
    with pytest.raises(BenchmarkError, match="unknown hyperparameter"):
        tune(TuneRequest(methods=["dsh"], out=tmp_path, hparams="dsh.nope=1", **QUICK))


def test_open_study_is_seeded_by_its_trial_count(tmp_path):
    request = TuneRequest(methods=["dsh"], trials=4, out=tmp_path)
    storage = f"sqlite:///{tmp_path / 's.db'}"
    first = open_study("x", storage, request)
    assert first.sampler._rng.rng.bytes(4) == optuna.samplers.TPESampler(seed=0)._rng.rng.bytes(4)
    first.enqueue_trial({"lr": 0.1})
    again = open_study("x", storage, request)
    assert again.sampler._rng.rng.bytes(4) == optuna.samplers.TPESampler(seed=1)._rng.rng.bytes(4)


def test_the_default_grid_runs_one_equal_budget_tuned_config():
    """``make leaderboard`` passes DEFAULT_GRID's config, which holds every trainable
    default-grid method, each chosen by the same rule on a validation split."""
    from benchmark.grid.config import load_config, settings_of
    from benchmark.grid.defaults import DEFAULT_GRID
    from benchmark.grid.runs import resolve_methods
    from tests.conftest import ROOT
    assert f"DEFAULT_CONFIG := {DEFAULT_GRID['config']}" in (ROOT / "Makefile").read_text()
    config = load_config(ROOT / DEFAULT_GRID["config"])
    trainable = [e.name for e in resolve_methods(list(DEFAULT_GRID["methods"]), settings_of(None, None))
                 if e.cls.trainable]
    assert sorted(config.hparams) == sorted(config.selection) == sorted(trainable)
    rules = {json.dumps({k: v for k, v in config.selection[m].items()
                         if k not in ("study", "best_trial", "best_value")}, sort_keys=True)
             for m in trainable}
    assert len(rules) == 1  # same trials, epoch cap, bits, split and sampler for every method
    rule = config.selection[trainable[0]]
    assert rule["objective"] == "map_tie_aware" and rule["split"]["queries"] == "validation split"
    assert rule["split"]["dataset"] == DEFAULT_GRID["dataset"] and 0 < rule["split"]["val_frac"] < 1
