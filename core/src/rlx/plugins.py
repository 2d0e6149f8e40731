"""The plugin manager: builtin plugins first, then the `rlx` entry-point group, then check_pending().

Builtin components register through the very same hooks as third-party ones. `RLX_DISABLE_PLUGINS=a,b`
blocks plugins by name. A plugin that fails to import, implements a hook rlx does not have (a typo such as
`register_environment`), or fails to register is recorded as broken (shown by `rlx plugins list`) and does not stop
a run that uses other components.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import types
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pluggy

from rlx import hookspecs
from rlx.errors import PluginError, did_you_mean
from rlx.interfaces import KINDS
from rlx.registry import Catalog, ComponentRegistry, PluginInfo

if TYPE_CHECKING:
    from rlx.algorithms import AlgorithmCatalog

hookimpl = pluggy.HookimplMarker(hookspecs.PROJECT)

ENTRY_POINT_GROUP = "rlx"
BUILTIN_PLUGINS = ("rlx.builtin.plugin",)
_HOOK_BY_KIND = {"generator": "register_generators", "trainer": "register_trainers", "environment": "register_environments"}


def disabled_plugins() -> set[str]:
    return {name.strip() for name in os.environ.get("RLX_DISABLE_PLUGINS", "").split(",") if name.strip()}


def _version() -> str:
    try:
        return md.version("rlx")
    except md.PackageNotFoundError:
        return "0+unknown"


class PluginManager:
    """Wraps a pluggy.PluginManager and keeps where each plugin came from."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        self.broken: list[PluginInfo] = []

    def register(self, plugin: Any, info: PluginInfo) -> None:
        if info.name in disabled_plugins():
            return
        if self.pm.has_plugin(info.name):
            raise PluginError(f"two plugins are named '{info.name}': {self.info[info.name].distribution} and {info.distribution}")
        try:
            self.pm.register(plugin, name=info.name)
        except pluggy.PluginValidationError as exc:  # a known hook with the wrong arguments
            self.broken.append(replace(info, error=f"{exc}. {_hook_help()}"))
            return
        self.info[info.name] = info

    def load_builtins(self) -> None:
        for module_name in BUILTIN_PLUGINS:
            module = importlib.import_module(module_name)
            self.register(module, PluginInfo("builtin", "rlx", _version(), "builtin", module_name))

    def load_entry_points(self, entry_points: Iterable[md.EntryPoint] | None = None) -> None:
        blocked = disabled_plugins()
        eps = entry_points if entry_points is not None else md.entry_points(group=ENTRY_POINT_GROUP)
        for ep in eps:
            dist = getattr(ep, "dist", None)
            info = PluginInfo(
                name=ep.name,
                distribution=dist.name if dist else "?",
                version=dist.version if dist else "?",
                origin="entry-point",
                module=ep.value,
            )
            if ep.name in blocked:
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import failure makes the plugin "broken", not fatal
                self.broken.append(PluginInfo(**{**info.__dict__, "error": f"{type(exc).__name__}: {exc}"}))
                continue
            self.register(plugin, info)

    def check_pending(self) -> None:
        """A plugin implementing a hook that does not exist (a typo would otherwise be silently ignored) is taken
        out and recorded as broken, naming the hook and the closest real one; the other plugins keep working."""
        for name, plugin in list(self.pm.list_name_plugin()):
            unknown = sorted(c.name for c in self.pm.get_hookcallers(plugin) or () if not c.has_spec())
            if not unknown:
                continue
            self.pm.unregister(plugin)
            hints = "".join(did_you_mean(hook, HOOK_NAMES) for hook in unknown)
            self.broken.append(replace(
                self.info.pop(name),
                error=f"implements {', '.join(repr(h) for h in unknown)}, which rlx does not have.{hints} {_hook_help()}",
            ))
        self.pm.check_pending()  # anything left that pluggy still rejects is rlx's own bug: let it raise

    def collect(self) -> Catalog:
        """Call every collector hook, one plugin at a time, so each component knows its plugin."""
        catalog = Catalog()
        broken: dict[str, PluginInfo] = {}
        for kind in KINDS:
            caller = getattr(self.pm.hook, _HOOK_BY_KIND[kind])
            for impl in caller.get_hookimpls():
                info = self.info[impl.plugin_name]
                registry = ComponentRegistry(kind, info, catalog.components[kind])
                try:
                    impl.function(registry=registry)
                except PluginError:
                    raise
                except Exception as exc:  # noqa: BLE001
                    broken[info.name] = PluginInfo(**{**info.__dict__, "error": f"{type(exc).__name__}: {exc}"})
        catalog.plugins = [broken.get(name, info) for name, info in self.info.items()] + self.broken
        return catalog

    def collect_algorithms(self) -> AlgorithmCatalog:
        """Call every `register_algorithms` hook, one plugin at a time (builtins first), into one catalog.
        A hook that raises marks its plugin broken (named when a selected option is missing)."""
        from rlx.algorithms import AlgorithmCatalog, AlgorithmRegistry

        catalog = AlgorithmCatalog(broken=list(self.broken))
        for impl in self.pm.hook.register_algorithms.get_hookimpls():  # registration order: builtins first
            info = self.info[impl.plugin_name]
            try:
                impl.function(registry=AlgorithmRegistry(info, catalog))
            except PluginError:
                raise
            except Exception as exc:  # noqa: BLE001
                catalog.broken.append(replace(info, error=f"{type(exc).__name__}: {exc}"))
        return catalog

    def add_commands(self, app: Any) -> None:
        self.pm.hook.register_commands(app=app)


HOOK_NAMES = tuple(sorted(n for n, obj in vars(hookspecs).items() if n.startswith("register_") and callable(obj)))


def _hook_help() -> str:
    return f"rlx's hooks: {', '.join(HOOK_NAMES)} (see docs/plugins.md)"


def load_plugins(extra: Iterable[tuple[Any, PluginInfo]] = ()) -> PluginManager:
    """Builtins, then entry points, then `extra` (tests register throwaway plugins here), then checks."""
    manager = PluginManager()
    manager.load_builtins()
    manager.load_entry_points()
    for plugin, info in extra:
        manager.register(plugin, info)
    manager.check_pending()
    return manager


_EXTRA: list[tuple[Any, PluginInfo]] = []


def add_plugin(plugin: types.ModuleType | object, name: str) -> None:
    """Register an in-process plugin object for this process (used by tests and notebooks)."""
    _EXTRA.append((plugin, PluginInfo(name, "(in-process)", "-", "in-process", getattr(plugin, "__name__", repr(plugin)))))


def remove_plugin(name: str) -> None:
    _EXTRA[:] = [(p, i) for p, i in _EXTRA if i.name != name]


def catalog() -> Catalog:
    """The components visible now (builtins + entry points + in-process plugins)."""
    return load_plugins(_EXTRA).collect()


def algorithm_catalog() -> AlgorithmCatalog:
    """The algorithm options visible now (builtins + entry points + in-process plugins)."""
    return load_plugins(_EXTRA).collect_algorithms()
