"""Import torchvision on a torch build whose wheel lacks torchvision's compiled operators.

The installed torchvision registers Python fake kernels for ``torchvision::nms`` and
``torchvision::qnms`` at import time, which fails when the C++ library did not define
them. Defining the two schemas first lets the import succeed; the pure-PyTorch parts
(``ops.roi_align`` falls back to its Python implementation, ``models``) then work. Where the
compiled library does load (a torchvision built for this torch, as on a CUDA machine), it
defines the operators itself and nothing is defined here: a second definition of the same
schema would fail inside the library's loading.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

_SCHEMAS = {
    "torchvision::nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "torchvision::qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


def compiled_operators_load() -> bool:
    """Load torchvision's compiled operator library (``_C``) into this torch; whether it
    loaded (torchvision's own import loads it again, a no-op then)."""
    spec = importlib.util.find_spec("torchvision")
    folders = (spec.submodule_search_locations or []) if spec else []
    library = next((p for folder in folders for p in sorted(Path(folder).glob("_C.*"))
                    if p.suffix in (".so", ".pyd")), None)
    if library is None:
        return False
    try:
        torch.ops.load_library(str(library))
    except (OSError, RuntimeError):  # built for another torch: undefined symbols
        return False
    return True


def import_torchvision():
    """Return the ``torchvision`` module, defining missing operator schemas first."""
    if not compiled_operators_load():
        for name, schema in _SCHEMAS.items():
            namespace, op = name.split("::")
            if not hasattr(getattr(torch.ops, namespace), op):
                try:
                    torch.library.define(name, schema)
                except RuntimeError:
                    pass  # defined concurrently
    import torchvision
    return torchvision
