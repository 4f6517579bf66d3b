"""Import torchvision on a torch build whose wheel lacks torchvision's compiled operators.

The installed torchvision registers Python fake kernels for ``torchvision::nms`` and
``torchvision::qnms`` at import time, which fails when the C++ library did not define
them. Defining the two schemas first lets the import succeed; the pure-PyTorch parts
(``ops.roi_align`` falls back to its Python implementation, ``models``) then work.
"""
from __future__ import annotations

import torch

_SCHEMAS = {
    "torchvision::nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "torchvision::qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


def import_torchvision():
    """Return the ``torchvision`` module, defining missing operator schemas first."""
    for name, schema in _SCHEMAS.items():
        namespace, op = name.split("::")
        if not hasattr(getattr(torch.ops, namespace), op):
            try:
                torch.library.define(name, schema)
            except RuntimeError:
                pass  # defined concurrently or by the compiled library
    import torchvision
    return torchvision
