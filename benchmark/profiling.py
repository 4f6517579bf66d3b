"""Parameters and MACs of the inference path (backbone + what ``encode`` uses).

MACs are counted by ``mmengine.analysis`` (fvcore's convention: one fused multiply-add = 1),
for one image at the run's input size.
"""
from __future__ import annotations

import logging
from functools import lru_cache

import torch
from torch import nn

from .backbones import build_backbone


def _quiet_mmengine():
    from mmengine.logging import MMLogger
    MMLogger.get_current_instance().setLevel(logging.ERROR)


def count_macs(module: nn.Module, inputs: tuple) -> int:
    from mmengine.analysis import FlopAnalyzer
    _quiet_mmengine()
    analyzer = FlopAnalyzer(module, inputs)
    analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return int(analyzer.total())


def count_params(module: nn.Module, buffers: bool = False) -> int:
    """Learned parameters; with ``buffers``, also fixed tensors (e.g. LSH's projection)."""
    tensors = list(module.parameters()) + (list(module.buffers()) if buffers else [])
    return sum(t.numel() for t in tensors)


class _Encode(nn.Module):
    def __init__(self, method, names):
        super().__init__()
        self.method, self.names = method, names

    def forward(self, *tensors):
        return self.method.encode(dict(zip(self.names, tensors)))


@lru_cache(maxsize=None)
def backbone_cost(backbone: str, input_size: int) -> tuple[int, int]:
    model = build_backbone(backbone, pretrained=False).eval()
    with torch.no_grad():
        return count_params(model), count_macs(model, (torch.zeros(1, 3, input_size, input_size),))


def profile_inference(method: nn.Module, input_shapes: dict, backbone: str,
                      input_size: int) -> dict:
    names = list(input_shapes)
    example = tuple(torch.zeros((1,) + tuple(input_shapes[n])) for n in names)
    was_training = method.training
    method.eval()
    with torch.no_grad():
        head_macs = count_macs(_Encode(method, names), example)
    method.train(was_training)
    backbone_params, backbone_macs = backbone_cost(backbone, input_size)
    head_params = count_params(method, buffers=True)
    return {"params": backbone_params + head_params, "macs": backbone_macs + head_macs,
            "params_backbone": backbone_params, "params_method": head_params,
            "macs_backbone": backbone_macs, "macs_method": head_macs}
