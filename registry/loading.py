"""Entry-point discovery with per-plugin isolation.

Every entry point of the ``benchmark.methods`` group is loaded on its own, built-in ones
first (so a built-in name is never taken by a newcomer): a plugin that fails to import,
fails pluggy's hook validation, raises inside a hook, registers a name already taken, or
has a name that breaks the rule of :mod:`.names` (its entry point, distribution and version
are checked before its code is imported; every method, dataset and backbone name when
registered) is recorded as a ``PluginFailure`` (one-line reason, unsafe values never
printed verbatim), whatever it registered is removed, and the others load normally.

``BENCHMARK_PLUGINS=a,b`` loads exactly those external plugins (built-ins always load);
``BENCHMARK_DISABLE_PLUGINS=a,b`` blocks the named entry points, built-in or not
(``PluginManager.set_blocked``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import metadata

import pluggy

from . import BACKBONES, DATASETS, METHODS
from .hookspecs import PROJECT, PluginHooks
from .names import check_name, check_version, is_safe_name, shown

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
    #: dataset / backbone name -> the plugin (entry-point name) that registered it
    datasets: dict[str, str] = field(default_factory=dict)
    backbones: dict[str, str] = field(default_factory=dict)


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {text}"


def _env_names(variable: str) -> set[str] | None:
    value = os.environ.get(variable, "").strip()
    return {n.strip() for n in value.split(",") if n.strip()} if value else None


def _distribution(ep) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "unknown", "unknown"
    return dist.metadata["Name"], dist.version


def _check_origin(plugin: str, dist: str, version: str) -> None:
    """The entry-point and distribution names and the version follow the name rule."""
    check_name("plugin", plugin)
    check_name("distribution", dist)
    check_version("distribution", version)


def _printable(plugin: str, dist: str, version: str) -> tuple[str, str, str]:
    """What a failure line may show: each value as it is when safe, else ``shown``."""
    return (plugin if is_safe_name(plugin) else shown(plugin),
            dist if is_safe_name(dist) else shown(dist),
            version if is_safe_name(version, version=True) else shown(version))


class _Registrar:
    """The ``register`` callables handed to one plugin's hooks; remembers what the plugin
    added so a failing plugin can be removed whole."""

    def __init__(self, plugin: str, dist: str, version: str, methods: dict):
        self.plugin, self.dist, self.version, self.methods = plugin, dist, version, methods
        self.added: list[tuple] = []

    def method(self, cls) -> None:
        name = check_name("method", getattr(cls, "name", None))
        from benchmark.method import HashMethod  # the harness's contract, imported on use
        if not (isinstance(cls, type) and issubclass(cls, HashMethod)):
            raise TypeError(f"method {name!r}: {cls!r} is not a HashMethod subclass")
        if name in self.methods:
            raise ValueError(f"method {name!r} already provided by plugin {self.methods[name].plugin!r}")
        self.methods[name] = MethodEntry(name, cls, self.plugin, self.dist, self.version)
        self.added.append((self.methods, name))

    def _into(self, registry, kind: str):
        def register(name: str, obj) -> None:
            check_name(kind, name)
            if name in registry.module_dict:
                raise ValueError(f"{kind} {name!r} is already registered")
            registry.register_module(name=name, module=obj)
            self.added.append((registry._module_dict, name))
        return register

    def undo(self) -> None:
        for table, name in self.added:
            table.pop(name, None)


def _call_hooks(manager, plugin_name: str, registrar: _Registrar) -> None:
    hooks = manager.hook
    for impl in hooks.benchmark_methods.get_hookimpls():
        if impl.plugin_name == plugin_name:
            for cls in impl.function() or []:
                registrar.method(cls)
    for hook, register in ((hooks.register_methods, registrar.method),
                           (hooks.register_datasets, registrar._into(DATASETS, "dataset")),
                           (hooks.register_backbones, registrar._into(BACKBONES, "backbone"))):
        for impl in hook.get_hookimpls():
            if impl.plugin_name == plugin_name:
                impl.function(register)


_LOADED: LoadedPlugins | None = None
_REGISTRARS: list[_Registrar] = []  # what the loaded plugins registered (undone on reload)


def load_plugins(reload: bool = False) -> LoadedPlugins:
    """Discover, import and register every plugin (cached per process)."""
    global _LOADED
    if _LOADED is not None and not reload:
        return _LOADED
    while _REGISTRARS:
        _REGISTRARS.pop().undo()
    DATASETS.import_from_location()  # built-in names first: a plugin cannot take them
    BACKBONES.import_from_location()
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(PluginHooks)
    only, blocked = _env_names("BENCHMARK_PLUGINS"), _env_names("BENCHMARK_DISABLE_PLUGINS")
    for name in blocked or ():
        manager.set_blocked(name)
    methods: dict[str, MethodEntry] = {}
    failures: list[PluginFailure] = []
    owners = {"datasets": {}, "backbones": {}}
    eps = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP),
                 key=lambda e: (_distribution(e)[0] != BUILTIN_DISTRIBUTION, e.name))
    for ep in eps:
        dist, version = _distribution(ep)
        if manager.is_blocked(ep.name) or (only is not None and dist != BUILTIN_DISTRIBUTION
                                           and ep.name not in only):
            continue
        registrar = _Registrar(ep.name, dist, version, methods)
        before = {k: set(r.module_dict) for k, r in (("datasets", DATASETS), ("backbones", BACKBONES))}
        try:
            _check_origin(ep.name, dist, version)  # before any of the plugin's code runs
            manager.register(ep.load(), name=ep.name)
            _call_hooks(manager, ep.name, registrar)
        except Exception as exc:  # noqa: BLE001 - isolation is the point
            registrar.undo()
            if manager.has_plugin(ep.name):
                manager.unregister(name=ep.name)
            failures.append(PluginFailure(*_printable(ep.name, dist, version), one_line(exc)))
            continue
        _REGISTRARS.append(registrar)
        for kind, registry in (("datasets", DATASETS), ("backbones", BACKBONES)):
            owners[kind].update({n: ep.name for n in set(registry.module_dict) - before[kind]})
    for entry in methods.values():
        METHODS.register_module(name=entry.name, module=entry.cls, force=True)
    _LOADED = LoadedPlugins(dict(sorted(methods.items())), failures,
                            dict(sorted(owners["datasets"].items())),
                            dict(sorted(owners["backbones"].items())))
    return _LOADED
