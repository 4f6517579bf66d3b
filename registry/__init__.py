"""Registries (mmengine) and plugin loading (pluggy entry points).

Built-in datasets and backbones are registered by the modules named in ``locations``,
imported when a registry is first asked for a name; plugins (built-in method packages and
third-party distributions alike) register through the hooks of :mod:`.hookspecs`.
"""
from mmengine.registry import Registry

METHODS = Registry("method", scope="benchmark")
DATASETS = Registry("dataset", scope="benchmark",
                    locations=["benchmark.data.cub", "benchmark.data.official",
                               "benchmark.data.synthetic", "benchmark.data.folder"])
BACKBONES = Registry("backbone", scope="benchmark", locations=["benchmark.features.backbones"])

from .hookspecs import hookimpl  # noqa: E402
from .loading import ENTRY_POINT_GROUP, MethodEntry, PluginFailure, load_plugins  # noqa: E402
