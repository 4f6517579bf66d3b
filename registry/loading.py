"""Entry-point discovery with per-plugin isolation.

Every entry point of the ``benchmark.methods`` group is loaded on its own: a plugin that
fails to import, fails pluggy's hook validation, or raises inside its hook is recorded as a
``PluginFailure`` (one-line reason) and the others load normally.

``BENCHMARK_PLUGINS=a,b`` loads exactly those external plugins (built-ins always load);
``BENCHMARK_DISABLE_PLUGINS=a,b`` blocks the named entry points, built-in or not.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata

import pluggy

from . import METHODS
from .hookspecs import PROJECT, MethodHooks

ENTRY_POINT_GROUP = "benchmark.methods"
BUILTIN_DISTRIBUTION = "fghashbench"


@dataclass(frozen=True)
class MethodEntry:
    name: str
    cls: type
    plugin: str
    distribution: str
    version: str

    @property
    def supervised(self) -> bool:
        return bool(getattr(self.cls, "supervised", True))


@dataclass(frozen=True)
class PluginFailure:
    plugin: str
    distribution: str
    version: str
    reason: str


@dataclass
class LoadedPlugins:
    methods: dict[str, MethodEntry]
    failures: list[PluginFailure]


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {text}"


def _env_names(variable: str) -> set[str] | None:
    value = os.environ.get(variable, "").strip()
    return {n.strip() for n in value.split(",") if n.strip()} if value else None


def _selected(entry_points, distribution_of):
    only, blocked = _env_names("BENCHMARK_PLUGINS"), _env_names("BENCHMARK_DISABLE_PLUGINS")
    for ep in entry_points:
        external = distribution_of(ep)[0] != BUILTIN_DISTRIBUTION
        if blocked and ep.name in blocked:
            continue
        if only is not None and external and ep.name not in only:
            continue
        yield ep


def _distribution(ep) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "unknown", "unknown"
    return dist.metadata["Name"], dist.version


_LOADED: LoadedPlugins | None = None


def load_plugins(reload: bool = False) -> LoadedPlugins:
    """Discover, import and register every method plugin (cached per process)."""
    global _LOADED
    if _LOADED is not None and not reload:
        return _LOADED
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(MethodHooks)
    methods: dict[str, MethodEntry] = {}
    failures: list[PluginFailure] = []
    eps = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
    for ep in _selected(eps, _distribution):
        dist, version = _distribution(ep)
        try:
            plugin = ep.load()
            manager.register(plugin, name=ep.name)
            for impl in manager.hook.benchmark_methods.get_hookimpls():
                if impl.plugin_name != ep.name:
                    continue
                for cls in impl.function() or []:
                    name = getattr(cls, "name", None)
                    if not isinstance(name, str) or not name:
                        raise TypeError(f"method class {cls!r} has no string `name`")
                    if name in methods:
                        raise ValueError(f"method {name!r} already provided by plugin "
                                         f"{methods[name].plugin!r}")
                    methods[name] = MethodEntry(name, cls, ep.name, dist, version)
        except Exception as exc:  # noqa: BLE001 - isolation is the point
            failures.append(PluginFailure(ep.name, dist, version, one_line(exc)))
            for name in [n for n, e in methods.items() if e.plugin == ep.name]:
                del methods[name]
    for entry in methods.values():
        METHODS.register_module(name=entry.name, module=entry.cls, force=True)
    _LOADED = LoadedPlugins(dict(sorted(methods.items())), failures)
    return _LOADED
