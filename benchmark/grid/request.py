"""What a user asks for (``run`` flags), validated before any work starts."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BenchmarkError
from .protocols import Protocol, expand_grid

OVERWRITE_MODES = ("never", "missing", "always")
REGIMES = ("frozen", "finetune")
BAD_IMAGE_MODES = ("fail", "skip")


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
    on_bad_image: str = "fail"
    backbone_weights: str | None = None

    def protocols(self) -> list[Protocol]:
        """Every protocol combination of the request (duplicates after normalising dropped)."""
        out = {}
        for noise in expand_grid(self.noise, "--noise"):
            for tail in expand_grid(self.long_tail, "--long-tail"):
                for resolution in self.resolution:
                    p = Protocol(noise=noise, long_tail=tail, resolution=resolution,
                                 resolution_db=self.resolution_db, val_frac=self.val_frac)
                    out.setdefault(json.dumps(p.spec(), sort_keys=True), p)
        return list(out.values())

    def validate(self) -> None:
        """Raise ``BenchmarkError`` (one line) for the first value that cannot run."""
        checks = [
            (not self.methods, "no methods given (--methods a,b,...)"),
            (any(b <= 0 for b in self.bits), f"bits must be positive integers, got {self.bits}"),
            (self.overwrite not in OVERWRITE_MODES,
             f"--overwrite must be one of {', '.join(OVERWRITE_MODES)}"),
            (self.regime not in REGIMES,
             f"unknown regime {self.regime!r}; available: {', '.join(REGIMES)}"),
            (self.input_size < 32, "--input-size must be at least 32"),
            (self.max_classes is not None and self.max_classes < 2, "--max-classes must be at least 2"),
            (self.epochs is not None and self.epochs < 1, "--epochs must be at least 1"),
            (self.on_bad_image not in BAD_IMAGE_MODES,
             f"--on-bad-image must be one of {', '.join(BAD_IMAGE_MODES)}"),
            (bool(self.backbone_weights) and not Path(self.backbone_weights or "").is_file(),
             f"--backbone-weights {self.backbone_weights}: no such file"),
        ]
        for failed, message in checks:
            if failed:
                raise BenchmarkError(message)
        self.protocols()  # parses (and so validates) every protocol value
