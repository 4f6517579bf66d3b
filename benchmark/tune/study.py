"""Equal-budget tuning: one seeded TPE study per method, trials as ordinary runs.

Every method of one tune gets the same budget: ``trials`` complete trials, each trained
for at most ``epoch_cap`` epochs (``space.capped``). Trial 0 is the method's defaults. A
trial is a run of the grid (``run.driver.run_grid``) on the tuning set (:mod:`.split`:
validation images as queries, the rest of the train split as database), marked
``spec["tuning"]`` (such runs never reach a leaderboard); its objective is the run's
tie-aware mAP (``OBJECTIVE``). A run that fails scores 0 (its error is kept on the trial).

The studies live in ``OUT/optuna.sqlite3`` beside the trials' ``OUT/results.sqlite``. A
study's name holds a digest of everything that makes its trials comparable (tuning set,
bits, epoch cap, search space, base settings, the method's code), so a changed setup starts
a new study. A killed tune leaves a trial RUNNING: the next start marks it failed, asks
for its values again (its run, when stored, is reused) and goes on until the study holds
``trials`` complete trials. The TPE sampler is seeded with ``seed`` plus the number of trials
the study already holds, so a resumed study does not repeat its random start.

Output: ``OUT/tuned.yaml``, a ``--config`` file with each method's chosen ``hparams`` (the
best trial's values, the epoch cap and any base settings) and its ``selection`` rule, which
every run made from it records in its spec.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import BenchmarkError
from ..grid.config import load_config, settings_of
from ..grid.digest import code_digest
from ..grid.request import GridRequest
from ..grid.runs import expand, resolve_methods
from ..method import hparam_defaults
from ..store.sqlite import ResultStore
from .space import capped, checked_space, suggest
from .split import register_tuning_set

OBJECTIVE = "map_tie_aware"
STORAGE_FILE = "optuna.sqlite3"
CONFIG_FILE = "tuned.yaml"


@dataclass
class TuneRequest:
    methods: list[str]
    dataset: str = "cub100"
    bits: int = 32
    trials: int = 20
    val_frac: float = 0.2
    seed: int = 0
    epoch_cap: int = 30
    out: Path = Path("results/tune")
    data_root: str | None = None
    cache_dir: Path | None = None
    max_classes: int | None = None
    input_size: int = 224
    regime: str = "frozen"
    backbone: str = "efficientnet_lite0"
    progress: bool = False
    hparams: str | dict | None = None
    config: str | None = None

    def validate(self) -> None:
        checks = [(not self.methods, "no methods given (--methods a,b,...)"),
                  (self.trials < 1, "--trials must be at least 1"),
                  (not 0 < self.val_frac < 1, "--val-frac must be in (0, 1) for tuning"),
                  (self.epoch_cap < 1, "--epoch-cap must be at least 1"),
                  (self.bits < 1, "--bits must be a positive integer")]
        for failed, message in checks:
            if failed:
                raise BenchmarkError(message)

    def startup_trials(self) -> int:
        """TPE's random-start trials: half the budget, at most Optuna's default of 10."""
        return min(10, max(1, self.trials // 2))


def trial_request(request: TuneRequest, dataset: str, method: str, values: dict,
                  tuning: dict) -> GridRequest:
    """The one-run grid request of a trial."""
    return GridRequest(methods=[method], dataset=dataset, bits=[request.bits],
                       seeds=[request.seed], regime=request.regime, backbone=request.backbone,
                       input_size=request.input_size, data_root=request.data_root,
                       out=Path(request.out), cache_dir=request.cache_dir,
                       progress=request.progress, hparams={method: values},
                       config=request.config, tuning=tuning)


def run_trial(request: GridRequest, dataset) -> dict:
    """Run (or find already stored) the trial's run; return its record."""
    from ..run.driver import run_grid
    (_, _, run_id), = expand(request, resolve_methods(request.methods, request.method_settings()),
                             dataset)
    run_grid(request, log=lambda *_: None)
    with ResultStore(Path(request.out) / "results.sqlite") as store:
        found = [r for r in store.records() if r["run_id"] == run_id]
    if not found:
        raise BenchmarkError(f"trial run {run_id} was not stored (another process holds it?)")
    return found[0]


def study_name(entry, base: dict, space: dict, fixed: dict, dataset: str, request) -> str:
    setup = {"dataset": dataset, "bits": request.bits, "epoch_cap": request.epoch_cap,
             "space": space, "fixed": fixed, "base": base, "regime": request.regime,
             "backbone": request.backbone, "input_size": request.input_size,
             "startup": request.startup_trials(), "seed": request.seed,
             "code": code_digest(entry.cls)}
    digest = hashlib.sha256(json.dumps(setup, sort_keys=True, default=str).encode()).hexdigest()
    return f"{entry.name}-{digest[:12]}"


def open_study(name: str, storage: str, request: TuneRequest):
    """Create or load the study; fail stale RUNNING trials and ask for their values again."""
    import optuna
    from optuna.trial import TrialState
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                load_if_exists=True)
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(stale.number, state=TrialState.FAIL)
        study.enqueue_trial(stale.params)
    study.sampler = optuna.samplers.TPESampler(seed=request.seed + len(study.trials),
                                               n_startup_trials=request.startup_trials())
    return study


def complete(study) -> list:
    from optuna.trial import TrialState
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def tune_method(entry, settings, dataset_name: str, dataset, request: TuneRequest, log) -> dict:
    """One method's study, run until it holds ``request.trials`` complete trials; returns
    the method's chosen hparams and selection rule."""
    defaults = hparam_defaults(entry.cls)
    space, fixed = capped(checked_space(entry.cls, entry.name), defaults, request.epoch_cap)
    base = dict(settings.hparams.get(entry.name, {}))
    name = study_name(entry, base, space, fixed, dataset_name, request)
    study = open_study(name, f"sqlite:///{Path(request.out).resolve() / STORAGE_FILE}", request)
    if not study.trials:
        first = {k: base.get(k, defaults[k]) for k in space}
        if "epochs" in first:
            first["epochs"] = min(first["epochs"], request.epoch_cap)
        study.enqueue_trial(first)
    tuning = {"study": name, "objective": OBJECTIVE, "queries": "validation split",
              "database": "train split minus validation"}
    while len(complete(study)) < request.trials:
        trial, started = study.ask(), time.time()
        values = {**base, **fixed, **suggest(trial, space)}
        record = run_trial(trial_request(request, dataset_name, entry.name, values, tuning), dataset)
        score = record["metrics"][OBJECTIVE] if record["status"] == "ok" else 0.0
        if record["status"] != "ok":
            trial.set_user_attr("error", record["error"])
        study.tell(trial, score)
        log(f"  {entry.name} trial {len(complete(study))}/{request.trials}: "
            f"{json.dumps(values, sort_keys=True)} -> val {OBJECTIVE} {score:.4f} "
            f"({time.time() - started:.0f} s)")
    best = max(complete(study), key=lambda t: (t.value, -t.number))
    selection = {"objective": OBJECTIVE, "trials": request.trials, "bits": request.bits,
                 "split": {"dataset": request.dataset, "val_frac": request.val_frac,
                           "seed": request.seed, "queries": "validation split",
                           "database": "train split minus validation"},
                 "sampler": {"kind": "TPE", "seed": request.seed,
                             "startup_trials": request.startup_trials()},
                 "epoch_cap": request.epoch_cap, "study": name, "best_trial": best.number,
                 "best_value": round(float(best.value), 6)}
    return {"hparams": {**base, **fixed, **best.params}, "selection": selection}


def write_config(path: Path, chosen: dict) -> None:
    """Write (or update) the ``--config`` file with each tuned method's entry."""
    import yaml
    data = {"hparams": {}, "selection": {}}
    if path.is_file():
        old = load_config(path)
        data = {"hparams": old.hparams, "selection": old.selection}
    for method, result in chosen.items():
        data["hparams"][method] = result["hparams"]
        data["selection"][method] = result["selection"]
    header = "# written by `python -m benchmark tune`; use with `python -m benchmark run --config FILE`\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(header + yaml.safe_dump(data, sort_keys=True))
    tmp.replace(path)


def tune(request: TuneRequest, log=print) -> dict:
    """Tune every method of ``request`` (all checked before any trial); write the config."""
    request.validate()
    settings = settings_of(request.hparams, request.config)
    entries = resolve_methods(request.methods, settings)
    for entry in entries:
        checked_space(entry.cls, entry.name)
    name, dataset = register_tuning_set(request.dataset, request.data_root, request.val_frac,
                                        request.seed, request.max_classes)
    Path(request.out).mkdir(parents=True, exist_ok=True)
    started, chosen = time.time(), {}
    for entry in entries:
        began = time.time()
        log(f"tuning {entry.name}: {request.trials} trials, epochs <= {request.epoch_cap}, "
            f"on {name} ({int(dataset.is_train.sum())} database, {int((~dataset.is_train).sum())} "
            f"validation queries)")
        chosen[entry.name] = tune_method(entry, settings, name, dataset, request, log)
        chosen[entry.name]["wall_s"] = round(time.time() - began, 1)
    write_config(Path(request.out) / CONFIG_FILE, {m: {k: v for k, v in r.items() if k != "wall_s"}
                                                  for m, r in chosen.items()})
    for method, result in chosen.items():
        log(f"{method}: best val {OBJECTIVE} {result['selection']['best_value']:.4f} "
            f"(trial {result['selection']['best_trial']}) with {json.dumps(result['hparams'], sort_keys=True)} "
            f"[{result['wall_s']:.0f} s]")
    log(f"tune wall time {time.time() - started:.0f} s; config: {Path(request.out) / CONFIG_FILE}")
    return chosen
