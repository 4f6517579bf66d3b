"""The pluggy hooks a plugin implements (registration callbacks, as in ``llm``).

A plugin is any importable object (usually a module) named by an entry point in the
``benchmark.methods`` group; the harness registers it with a pluggy ``PluginManager`` and
calls each hook it implements once, with a ``register`` callable. Built-in method packages
in ``plugins/`` use exactly the same seam.
"""
import pluggy

PROJECT = "benchmark"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class PluginHooks:
    @hookspec
    def register_methods(self, register):
        """Call ``register(cls)`` for each method class (a ``benchmark.method.HashMethod``
        subclass with a unique ``name``)."""

    @hookspec
    def register_datasets(self, register):
        """Call ``register(name, builder)`` for each dataset: ``builder(data_root=None,
        strict=True, **options)`` returns a ``benchmark.data.ImageSet``."""

    @hookspec
    def register_backbones(self, register):
        """Call ``register(name, cls)`` for each backbone: an ``nn.Module`` class built as
        ``cls(pretrained=True, weights=None)`` (``pretrained=False``: profiling only needs the
        architecture) whose instances map an image batch to ``{"s8", "s16", "s32", "pooled"}``
        and carry ``mean``/``std`` (normalisation) and ``weights_id`` (what its weights are)."""

    @hookspec
    def benchmark_methods(self):
        """Older form of ``register_methods``: return the method classes."""
