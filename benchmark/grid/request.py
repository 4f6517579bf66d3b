"""What a user asks for (``run`` flags), validated before any work starts."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BenchmarkError
from ..features.backbones import NO_WEIGHTS, check_backbone_weights, check_pretrained
from ..run.device import PRECISIONS, check_device
from .protocols import Protocol, expand_grid
from .unseen import SETTINGS

OVERWRITE_MODES = ("never", "missing", "always")
#: the longest code a run may ask for (a guard against typos such as --bits 100000)
MAX_BITS = 1024
MAX_SEED = 2**32 - 1  # seeds feed numpy's seed (mod 2**32) and torch's generators
REGIMES = ("frozen", "finetune")
BAD_IMAGE_MODES = ("fail", "skip")
EXECUTORS = ("local", "ray")


@dataclass
class GridRequest:
    methods: list[str]
    dataset: str = "cub100"
    bits: list[int] = field(default_factory=lambda: [12, 24, 32, 48])
    seeds: list[int] = field(default_factory=lambda: [0])
    regime: str = "frozen"
    backbone: str = "efficientnet_lite0"
    input_size: int = 224
    epochs: int | None = None
    max_classes: int | None = None
    data_root: str | None = None
    out: Path = Path("results")
    overwrite: str = "missing"
    cache_dir: Path | None = None
    progress: bool = True
    #: protocol grids (CLI syntax, e.g. "symmetric:0,0.2"); every combination is run
    noise: str | None = None
    long_tail: str | None = None
    resolution: list[float] = field(default_factory=lambda: [1])
    resolution_db: float = 1
    val_frac: float = 0.0
    #: shares of the classes held out of training (``grid.unseen``), each in its four settings
    unseen_classes: list[float] = field(default_factory=lambda: [0.0])
    #: a split file (``grid.splitfile``): its protocol and seed replace the protocol flags
    protocol_file: str | None = None
    on_bad_image: str = "fail"
    backbone_weights: str | None = None
    #: auto (a GPU when present), cpu, cuda or cuda:N; recorded, not part of a run's identity
    device: str = "auto"
    #: fp32, bf16 or fp16 (finetune only); part of a finetune run's identity
    precision: str = "fp32"
    #: image-loading worker processes (finetune; None: 0 on the CPU, up to 8 beside a GPU)
    workers: int | None = None
    keep_checkpoints: bool = False
    #: method settings: ``--hparams`` text (or {method: {name: value}}) and a ``--config`` file
    hparams: str | dict | None = None
    config: str | None = None
    #: set by ``tune`` on its trials' requests: the mark that keeps them off leaderboards
    tuning: dict | None = None
    #: local (this process, one run after another) or ray (one task per run: run.ray_executor)
    executor: str = "local"
    #: Ray cluster to join (None: start a local one with this machine's CPUs; "auto": running)
    ray_address: str | None = None
    max_parallel: int | None = None  # runs in flight at once on Ray (None: as resources allow)

    def method_settings(self):
        """The per-method settings of ``--config``, ``--hparams`` and ``--epochs``."""
        from .config import settings_of
        return settings_of(self.hparams, self.config, self.epochs, self.tuning)

    def protocols(self) -> list[Protocol]:
        """Every protocol combination of the request (duplicates after normalising dropped);
        with ``protocol_file``, the file's protocol alone."""
        if self.protocol_file:
            from .splitfile import protocol_of
            return [protocol_of(self.protocol_file)]
        out = {}
        for noise in expand_grid(self.noise, "--noise"):
            for tail in expand_grid(self.long_tail, "--long-tail"):
                for resolution in self.resolution:
                    for unseen, setting in _unseen_settings(self.unseen_classes):
                        p = Protocol(noise=noise, long_tail=tail, resolution=resolution,
                                     resolution_db=self.resolution_db, val_frac=self.val_frac,
                                     unseen_classes=unseen, unseen_eval=setting)
                        out.setdefault(json.dumps(p.spec(), sort_keys=True), p)
        return list(out.values())

    def validate(self) -> None:
        """Raise ``BenchmarkError`` (one line) for the first value that cannot run."""
        checks = [
            (not self.methods, "no methods given (--methods a,b,...)"),
            (any(b <= 0 for b in self.bits), f"bits must be positive integers, got {self.bits}"),
            (any(b > MAX_BITS for b in self.bits),
             f"bits must be at most {MAX_BITS}, got {max(self.bits, default=0)}"),
            (not self.seeds or any(not 0 <= s <= MAX_SEED for s in self.seeds),
             f"seeds must be integers in 0..{MAX_SEED}, got {self.seeds}"),
            (self.overwrite not in OVERWRITE_MODES,
             f"--overwrite must be one of {', '.join(OVERWRITE_MODES)}"),
            (self.regime not in REGIMES,
             f"unknown regime {self.regime!r}; available: {', '.join(REGIMES)}"),
            (self.input_size < 32, "--input-size must be at least 32"),
            (self.max_classes is not None and self.max_classes < 2, "--max-classes must be at least 2"),
            (self.epochs is not None and self.epochs < 1, "--epochs must be at least 1"),
            (self.on_bad_image not in BAD_IMAGE_MODES,
             f"--on-bad-image must be one of {', '.join(BAD_IMAGE_MODES)}"),
            (self.backbone_weights not in (None, "", NO_WEIGHTS)
             and not Path(self.backbone_weights or "").is_file(),
             f"--backbone-weights {self.backbone_weights}: no such file"),
            (self.precision not in PRECISIONS,
             f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"),
            (self.precision != "fp32" and self.regime != "finetune",
             f"--precision {self.precision} is for --regime finetune (frozen heads train in fp32)"),
            (self.workers is not None and self.workers < 0, "--workers must be at least 0"),
            (self.executor not in EXECUTORS,
             f"--executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}"),
            (self.executor != "ray" and (self.ray_address is not None or self.max_parallel is not None),
             "--ray-address and --max-parallel are for --executor ray"),
            (self.max_parallel is not None and self.max_parallel < 1, "--max-parallel must be at least 1"),
        ]
        for failed, message in checks:
            if failed:
                raise BenchmarkError(message)
        for flag, text in (("--noise", self.noise), ("--long-tail", self.long_tail)):
            if text is not None and not all(part.strip() for part in text.split(",")):
                raise BenchmarkError(f"{flag} {text!r}: an empty item in the list")
        if self.protocol_file:
            self._use_protocol_file()
        for protocol in self.protocols():  # parses (and so validates) every protocol value
            _check_finite(protocol)
        self.check_registered()
        self.method_settings()  # parses (and so validates) --hparams and --config
        check_device(self.device)
        check_pretrained(self.backbone, self.backbone_weights)  # random init only when said
        if self.backbone_weights and self.backbone_weights != NO_WEIGHTS:
            check_backbone_weights(self.backbone, self.backbone_weights)  # unreadable, unsafe, mismatched

    def _use_protocol_file(self) -> None:
        """The file's seed becomes the grid's; protocol flags beside a file are refused."""
        from .splitfile import read
        seed = read(self.protocol_file)["seed"]
        flags = [flag for flag, given in (
            ("--noise", self.noise), ("--long-tail", self.long_tail), ("--val-frac", self.val_frac),
            ("--unseen-classes", any(self.unseen_classes)), ("--resolution", self.resolution != [1]),
            ("--resolution-db", self.resolution_db != 1), ("--seeds", self.seeds not in ([0], [seed])))
            if given]
        if flags:
            raise BenchmarkError(f"--protocol-file {self.protocol_file} sets the protocol and seed "
                                 f"({seed}); drop {', '.join(flags)}")
        self.seeds = [seed]

    def check_registered(self) -> None:
        """The dataset and backbone are registered (built-in or by a plugin)."""
        from registry import BACKBONES, DATASETS, load_plugins
        from ..data.images import registered_name
        load_plugins()
        for kind, name, registry in (("dataset", registered_name(self.dataset)[0], DATASETS),
                                     ("backbone", self.backbone, BACKBONES)):
            registry.import_from_location()
            if name not in registry.module_dict:
                raise BenchmarkError(f"unknown {kind} {name!r}; known: "
                                     f"{', '.join(sorted(registry.module_dict))}")


def _check_finite(protocol: Protocol) -> None:
    """Every number of a protocol is finite (``nan`` and ``inf`` parse as floats)."""
    noise = protocol.noise_kind_rate
    values = {"--noise": noise[1] if noise else 0.0, "--long-tail": protocol.rho or 1.0,
              "--resolution": protocol.resolution, "--resolution-db": protocol.resolution_db,
              "--val-frac": protocol.val_frac, "--unseen-classes": protocol.unseen_classes}
    for flag, value in values.items():
        if not math.isfinite(value):
            raise BenchmarkError(f"{flag}: {value} is not a finite number")


def _unseen_settings(fractions: list[float]) -> list[tuple]:
    """(fraction, setting) pairs: the four settings of each positive fraction, (0, None) for 0."""
    return [(f, setting) for f in fractions for setting in (SETTINGS if f > 0 else (None,))]
