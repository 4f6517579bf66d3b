"""The pluggy hook specifications a method plugin implements.

A plugin is any importable object (usually a module) named by an entry point in the
``benchmark.methods`` group; the harness registers it with a pluggy ``PluginManager`` and
calls the hooks below. Built-in plugins in ``plugins/`` use exactly the same seam.
"""
import pluggy

PROJECT = "benchmark"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class MethodHooks:
    @hookspec
    def benchmark_methods(self):
        """Return the method classes this plugin provides.

        Each class subclasses ``benchmark.method.HashMethod`` and sets a unique ``name``;
        the harness registers it in ``registry.METHODS`` under that name.
        """
