"""The typed registries that collector hooks fill, and the metadata kept for each component."""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from rlx.errors import ComponentError, PluginError, RlxError, a_or_an
from rlx.interfaces import KINDS, ComponentKind, ModelSpec


@dataclass(frozen=True)
class PluginInfo:
    """Where a plugin comes from (shown by `rlx plugins list`)."""

    name: str
    distribution: str
    version: str
    origin: str  # "builtin" | "entry-point" | "fixture" ...
    module: str
    error: str | None = None  # set when the plugin is broken (failed to import or to register)


@dataclass(frozen=True)
class ComponentSpec:
    """One registered component. `factory` is an import string, imported only when selected."""

    kind: ComponentKind
    name: str
    config: type[BaseModel]
    factory: str
    plugin: PluginInfo
    description: str = ""
    requires: tuple[str, ...] = ()
    install_hint: str = ""

    def check_installed(self) -> None:
        """Raise a ComponentError naming the missing module and how to install it."""
        for module in self.requires:
            if importlib.util.find_spec(module) is None:
                hint = f" Install it with: {self.install_hint}" if self.install_hint else ""
                raise ComponentError(
                    f"{self.kind} '{self.name}' (from {self.plugin.distribution}) needs the Python package "
                    f"'{module}', which is not installed.{hint}"
                )

    @property
    def label(self) -> str:
        """How messages name this component: kind, name and the distribution that provides it."""
        return f"{self.kind} '{self.name}' (from {self.plugin.distribution})"

    def load_factory(self) -> Any:
        """The factory itself (after checking the packages it needs are installed)."""
        self.check_installed()
        return load_factory(self.factory, label=self.label)

    def build(self, config: BaseModel, ctx: BuildContext) -> Any:
        """Build the component from its own validated config and the build context (see `build_component`)."""
        self.check_installed()
        return build_component(self.kind, self.factory, config, ctx, label=self.label)


@dataclass(frozen=True)
class BuildContext:
    """What a component factory receives besides its own config: never the run config.

    seed: the run seed. model: the resolved policy model (generators and trainers; None for environments).
    with_reference: trainers also build the frozen reference policy (the KL term is on).
    """

    seed: int
    model: ModelSpec | None = None
    with_reference: bool = False


def load_factory(import_string: str, *, label: str = "component") -> Any:
    """`"package.module:attr"` -> the attribute. The one place rlx imports a component implementation."""
    module_name, sep, attr = import_string.partition(":")
    if not sep or not module_name or not attr:
        raise ComponentError(f"{label}: a factory must be an import string 'module:attr', got {import_string!r}")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr)
    except Exception as exc:  # a broken implementation module must be named, not a bare traceback
        raise ComponentError(f"{label} failed to load '{import_string}': {type(exc).__name__}: {exc}") from exc


# what each kind's factory is called with besides its config (the documented factory signatures)
def _factory_kwargs(kind: ComponentKind, ctx: BuildContext) -> dict[str, Any]:
    if kind == "environment":
        return {"seed": ctx.seed}
    if ctx.model is None:
        raise ValueError(f"building {a_or_an(kind)} needs BuildContext.model")
    if kind == "trainer":
        return {"model": ctx.model, "seed": ctx.seed, "with_reference": ctx.with_reference}
    return {"model": ctx.model, "seed": ctx.seed}


def build_component(kind: ComponentKind, factory: str, config: BaseModel, ctx: BuildContext, *, label: str) -> Any:
    """Call the component's factory as its kind's contract says. A factory that raises becomes one
    ComponentError naming the component and its plugin (an RlxError it raises itself passes through as is)."""
    make = load_factory(factory, label=label)
    try:
        return make(config, **_factory_kwargs(kind, ctx))
    except RlxError:
        raise
    except Exception as exc:  # noqa: BLE001 - the plugin's bug, reported with its name
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "no message"
        raise ComponentError(
            f"{label} could not be built: its factory '{factory}' raised {type(exc).__name__}: {detail} "
            f"(set RLX_DEBUG=1 for the traceback)"
        ) from exc


class ComponentRegistry:
    """Handed to a `register_<kind>s` hook; the plugin calls `add` once per component."""

    def __init__(self, kind: ComponentKind, plugin: PluginInfo, sink: dict[str, ComponentSpec]) -> None:
        self.kind = kind
        self._plugin = plugin
        self._sink = sink

    def add(
        self,
        name: str,
        *,
        config: type[BaseModel],
        factory: str,
        description: str = "",
        requires: tuple[str, ...] | list[str] = (),
        install_hint: str = "",
    ) -> None:
        """Register component `name` with its own pydantic `config` model and a lazy `factory` ("mod:attr")."""
        if not name or not name.replace("-", "_").replace(".", "_").isidentifier():
            raise PluginError(f"plugin '{self._plugin.name}' registered an invalid {self.kind} name {name!r}")
        if not (isinstance(config, type) and issubclass(config, BaseModel)):
            raise PluginError(
                f"plugin '{self._plugin.name}': {self.kind} '{name}' config must be a pydantic BaseModel class"
            )
        if ":" not in factory:
            raise PluginError(
                f"plugin '{self._plugin.name}': {self.kind} '{name}' factory must be 'module:attribute', "
                f"got {factory!r}"
            )
        if name in self._sink:
            other = self._sink[name].plugin
            raise PluginError(
                f"two plugins register {a_or_an(self.kind)} named '{name}': {other.distribution} "
                f"(plugin '{other.name}', {other.module}) and {self._plugin.distribution} "
                f"(plugin '{self._plugin.name}', {self._plugin.module}); uninstall or disable one "
                f"(RLX_DISABLE_PLUGINS={self._plugin.name})"
            )
        self._sink[name] = ComponentSpec(
            kind=self.kind,
            name=name,
            config=config,
            factory=factory,
            plugin=self._plugin,
            description=description,
            requires=tuple(requires),
            install_hint=install_hint,
        )


@dataclass
class Catalog:
    """Everything the plugin manager found: components by kind, and every plugin (broken ones too)."""

    components: dict[ComponentKind, dict[str, ComponentSpec]] = field(
        default_factory=lambda: {kind: {} for kind in KINDS}
    )
    plugins: list[PluginInfo] = field(default_factory=list)

    def get(self, kind: ComponentKind, name: str) -> ComponentSpec:
        """The component, or a ComponentError listing what exists (with a did-you-mean)."""
        found = self.components[kind]
        if name in found:
            return found[name]
        from rlx.errors import did_you_mean

        broken = [p for p in self.plugins if p.error]
        msg = f"unknown {kind} '{name}'. Available {kind}s: {', '.join(sorted(found)) or '(none)'}.{did_you_mean(name, found)}"
        if broken:
            msg += " Broken plugins (may provide it): " + "; ".join(f"{p.name}: {p.error}" for p in broken)
        raise ComponentError(msg)
