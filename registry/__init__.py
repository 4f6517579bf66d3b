"""Registries (mmengine) and plugin loading (pluggy + entry points)."""
from mmengine.registry import Registry

METHODS = Registry("method", scope="benchmark")
DATASETS = Registry("dataset", scope="benchmark")
BACKBONES = Registry("backbone", scope="benchmark")

from .hookspecs import hookimpl  # noqa: E402
from .loading import ENTRY_POINT_GROUP, MethodEntry, PluginFailure, load_plugins  # noqa: E402

__all__ = ["METHODS", "DATASETS", "BACKBONES", "hookimpl", "ENTRY_POINT_GROUP",
           "MethodEntry", "PluginFailure", "load_plugins"]
