"""``python -m benchmark reproduce``: re-run committed records from their stored specs and
compare headlines.

Each selected record becomes a one-run grid request (same dataset, protocol, seed, bits,
hyperparameters, epochs); the spec that today's code would give that request is compared
with the stored one first: when they differ (a plugin's code, version or defaults changed
since the record was made) the record is refused with one line, unless
``allow_code_change``. Each re-run uses the torch thread count the record was made with
(its provenance ``hardware`` ends ``threads=N``). The headline is the tie-aware mAP
(``map_tie_aware``). Tolerance: closed-form methods (``trainable = False``) must match to
``CLOSED_FORM_TOLERANCE``; trained ones within the larger of ``TRAINED_TOLERANCE`` and a
95% half-width (t distribution) from the seeds of the record's cell (same method, bits,
setting and protocol in the records file). On the record's own hardware (the same
``hardware_id``) that is the half-width of the cell's mean. On other hardware the float
kernels differ, SGD's trajectory parts from the committed one and the re-run is another
draw of the cell's distribution, so it is the half-width of the difference of two draws,
t * s * sqrt(2).
"""
from __future__ import annotations

import random
import re
import tempfile
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tabulate import tabulate

from ..data import build_grid_dataset
from ..errors import BenchmarkError
from ..eval.machine import hardware_id
from ..grid.protocols import protocol_label
from ..grid.request import GridRequest
from ..grid.runs import expand, resolve_methods
from ..report.stats import mean_halfwidth, two_draw_halfwidth
from ..store.records import read_records
from .driver import run_grid

HEADLINE = "map_tie_aware"
CLOSED_FORM_TOLERANCE = 1e-6
TRAINED_TOLERANCE = 0.005  # 0.5 mAP points


@dataclass
class Selection:
    methods: list[str] | None = None
    bits: list[int] | None = None
    seeds: list[int] | None = None
    sample: int | None = None

    def pick(self, records: list[dict]) -> list[dict]:
        chosen = [r for r in sorted(records, key=lambda r: r["run_id"])
                  if (not self.methods or r["method"] in self.methods)
                  and (not self.bits or r["bits"] in self.bits)
                  and (not self.seeds or r["seed"] in self.seeds)]
        if self.sample is not None and self.sample < len(chosen):
            chosen = sorted(random.Random(0).sample(chosen, self.sample), key=lambda r: r["run_id"])
        if not chosen:
            raise BenchmarkError("no committed record matches the selection")
        return chosen


def cell_key(record: dict) -> tuple:
    spec = record["spec"]
    return (record["dataset"], record["method"], record["bits"], spec["regime"], spec["backbone"],
            spec["input_size"], protocol_label(spec["protocol"]), str(spec.get("epochs")),
            str(sorted(spec.get("hparams", {}).items())))


def stored_hparams(spec: dict) -> dict:
    """The record's resolved hyperparameters and training config as ``--hparams`` values."""
    train = dict(spec.get("train") or {})
    optimizer = dict(train.pop("optimizer", None) or {})
    if "type" in optimizer:
        train["optimizer"] = optimizer.pop("type")
    return {**spec.get("hparams", {}), **train, **optimizer}


def selection_config(spec: dict, out: Path) -> Path | None:
    """A record made from a tuned config carries its selection rule (``spec.selection``):
    a one-method config file holding it, so the re-run's spec records the same rule."""
    if not spec.get("selection"):
        return None
    import yaml
    path = Path(out) / f"selection-{spec['method']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"selection": {spec["method"]: spec["selection"]}}))
    return path


def request_for(record: dict, out: Path, data_root, cache_dir) -> GridRequest:
    """The one-run grid request that produced ``record``."""
    spec = record["spec"]
    if spec.get("backbone_weights"):
        raise BenchmarkError(f"record {record['run_id']}: made with a backbone checkpoint "
                             f"({spec['backbone_weights']}); reproduce runs without one")
    dataset, _, first = spec["dataset"].partition("-first")
    protocol = spec["protocol"]
    return GridRequest(methods=[spec["method"]], dataset=dataset, bits=[spec["bits"]],
                       seeds=[spec["seed"]], regime=spec["regime"], backbone=spec["backbone"],
                       input_size=spec["input_size"],
                       hparams={spec["method"]: stored_hparams(spec)},
                       config=selection_config(spec, out),
                       max_classes=int(first) if first.isdigit() else None, data_root=data_root,
                       out=out, overwrite="always", cache_dir=cache_dir, progress=False,
                       noise=protocol.get("noise"), long_tail=protocol.get("long_tail"),
                       resolution=[protocol.get("resolution", 1)],
                       resolution_db=protocol.get("resolution_db", 1),
                       val_frac=protocol.get("val_frac", 0),
                       on_bad_image=spec.get("on_bad_image", "fail"))


def today(record: dict, request: GridRequest, datasets: dict) -> tuple:
    """(registry entry, spec keys whose value today's code gives differently: empty for the
    same run identity); ``datasets`` caches each dataset the records need (built once)."""
    settings = request.method_settings()
    entry, = resolve_methods(request.methods, settings)
    key = (request.dataset, request.data_root, request.max_classes)
    if key not in datasets:
        datasets[key] = build_grid_dataset(*key)
    (_, spec, _), = expand(request, [entry], datasets[key], settings)
    old = record["spec"]
    return entry, sorted(k for k in set(spec) | set(old) if spec.get(k) != old.get(k))


@contextmanager
def record_threads(hardware: str):
    """Torch runs with the thread count ``hardware`` (a record's provenance) names."""
    import torch
    named = re.search(r"threads=(\d+)$", hardware)
    before = torch.get_num_threads()
    torch.set_num_threads(int(named.group(1)) if named else before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tolerance(trainable: bool, cell: list[float], same_hardware: bool) -> float:
    """How far a re-run's headline may lie from the committed one (module docstring)."""
    if not trainable:
        return CLOSED_FORM_TOLERANCE
    spread = mean_halfwidth(cell)[1] if same_hardware else two_draw_halfwidth(cell)
    return max(TRAINED_TOLERANCE, spread or 0.0)


def reproduce(records_file: Path, selection: Selection, out: Path | None = None, data_root=None,
              cache_dir=None, allow_code_change: bool = False, log=print) -> list[dict]:
    """Re-run the selected records; return one comparison row per record."""
    records = read_records(records_file)
    cells: dict[tuple, list[float]] = defaultdict(list)
    for r in records:
        cells[cell_key(r)].append(r["metrics"][HEADLINE])
    out = Path(out or tempfile.mkdtemp(prefix="reproduce-"))
    rows, datasets = [], {}
    for record in selection.pick(records):
        request = request_for(record, out, data_root, cache_dir)
        entry, changed = today(record, request, datasets)
        if changed and not allow_code_change:
            raise BenchmarkError(f"method {record['method']!r}: its code or defaults changed since "
                                 f"record {record['run_id']} was made (spec keys {', '.join(changed)}); "
                                 f"pass --allow-code-change to compare anyway")
        committed_hardware = (record.get("provenance") or {}).get("hardware", "?")
        with record_threads(committed_hardware):
            new, = run_grid(request, log=lambda *_: None)
            reproduced_hardware = hardware_id()
        if new["status"] != "ok":
            raise BenchmarkError(f"record {record['run_id']}: the re-run failed: {new['error']}")
        same_hardware = committed_hardware == reproduced_hardware
        allowed = tolerance(entry.cls.trainable, cells[cell_key(record)], same_hardware)
        committed, again = record["metrics"][HEADLINE], new["metrics"][HEADLINE]
        rows.append({"run_id": record["run_id"], "method": record["method"], "bits": record["bits"],
                     "seed": record["seed"], "protocol": protocol_label(record["spec"]["protocol"]),
                     "committed": committed, "reproduced": again, "difference": again - committed,
                     "tolerance": allowed, "ok": abs(again - committed) <= allowed,
                     "committed_hardware": committed_hardware,
                     "reproduced_hardware": reproduced_hardware, "same_hardware": same_hardware,
                     "code_changed": changed})
    return rows


def render(rows: list[dict]) -> str:
    """The comparison table (mAP in %), then which hardware produced each side."""
    table = [[r["method"], r["bits"], r["seed"], r["protocol"], f"{100 * r['committed']:.4f}",
              f"{100 * r['reproduced']:.4f}", f"{100 * r['difference']:+.4f}",
              f"{100 * r['tolerance']:.4g}", "same" if r["same_hardware"] else "other",
              "ok" if r["ok"] else "DIFFERS"] for r in rows]
    text = tabulate(table, headers=["method", "bits", "seed", "protocol", "committed (tie-aware mAP %)",
                                    "reproduced", "difference", "tolerance", "hardware", "verdict"],
                    tablefmt="github", disable_numparse=True)
    committed = sorted({r["committed_hardware"] for r in rows})
    reproduced = sorted({r["reproduced_hardware"] for r in rows})
    return (f"{text}\n\ncommitted on: {'; '.join(committed)}\nreproduced on: {'; '.join(reproduced)}\n"
            f"{sum(r['ok'] for r in rows)} of {len(rows)} within tolerance")
