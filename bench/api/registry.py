"""One generic registry type; every component registers by name next to its class."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from bench.api.errors import UserError

T = TypeVar("T")


class UnknownComponentError(UserError):
    """A scenario named a component that is not registered."""


class Registry(Generic[T]):
    """Maps names to component classes of one kind (tier, model, task, ...)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator: register ``cls`` under ``name``; duplicate names raise."""

        def decorate(cls: type[T]) -> type[T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered by {self._entries[name].__qualname__}")
            self._entries[name] = cls
            cls.name = name  # type: ignore[attr-defined]
            return cls

        return decorate

    def get(self, name: str, *, file: str | None = None, key: str | None = None) -> type[T]:
        load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            allowed = ", ".join(sorted(self._entries)) or "(none registered)"
            raise UnknownComponentError(
                f"unknown {self.kind} {name!r}; allowed: {allowed}", file=file, key=key
            ) from None

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        load_plugins()
        return name in self._entries


TIERS: Registry = Registry("tier")
MODELS: Registry = Registry("model")
TASKS: Registry = Registry("task")
METHODS: Registry = Registry("method")
ATTACKS: Registry = Registry("attack")
DEFENSES: Registry = Registry("defense")
PROTOCOLS: Registry = Registry("protocol")
"""Round protocols (``federation.protocol``): ``bench.api.protocol.Protocol`` subclasses."""

# Packages whose modules register components on import. The rule is explicit and has no exception:
# every module inside (helpers and subpackages too) is imported once. A component registers itself with
# the decorator next to its class; a helper module registers nothing, so importing it is harmless. No
# naming convention (such as a leading underscore) decides what is a plugin.
PLUGIN_PACKAGES = ("bench.world.tiers", "bench.world.models", "bench.world.tasks", "bench.methods", "bench.engine.protocols",
                   "attacks", "defenses")
# Installed distributions can add components: ``[project.entry-points."tierbench.plugins"]`` naming a module.
ENTRY_POINT_GROUP = "tierbench.plugins"
_loaded = False
loaded_plugins: list[str] = []
"""Files and entry points loaded from outside the project (``--plugins``), in load order."""


def load_plugins() -> None:
    """Import every component module so their decorators run (idempotent)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib
    import pkgutil

    for package_name in PLUGIN_PACKAGES:
        try:
            package = importlib.import_module(package_name)
        except ModuleNotFoundError as error:
            if error.name == package_name:
                continue
            raise
        for info in pkgutil.walk_packages(getattr(package, "__path__", []), prefix=package_name + "."):
            importlib.import_module(info.name)
    _load_entry_points()


def _load_entry_points() -> None:
    import importlib.metadata

    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        _guarded(f"entry point {entry.name} ({entry.value})", entry.load)


def _guarded(what: str, load: Callable[[], object]) -> None:
    """Run a plugin import; any failure is the user's plugin failing, reported by name, not a traceback."""
    try:
        load()
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - whatever the plugin raised, name it and its cause
        raise UserError(f"cannot load plugin {what}: {type(error).__name__}: {error}", key="--plugins") from None
    loaded_plugins.append(what)


def load_plugin_dir(directory: str | Path) -> list[str]:
    """Import every ``*.py`` module and package in ``directory`` (names starting with ``_`` excepted), so
    that the components they register (tiers, models, tasks, methods, attacks, defenses) can be named in
    scenarios. The folder goes on ``sys.path`` so its modules can import each other. Returns the files."""
    import importlib.util
    import sys

    folder = Path(directory).expanduser()
    if not folder.is_dir():
        raise UserError(f"plugin folder {folder} does not exist or is not a folder", key="--plugins")
    load_plugins()  # built-ins first: a plugin reusing a built-in name is then the plugin's error
    modules = sorted(p for p in folder.iterdir() if not p.name.startswith(("_", "."))
                     and (p.suffix == ".py" or (p / "__init__.py").exists()))
    if not modules:
        raise UserError(f"plugin folder {folder} holds no .py module", key="--plugins")
    if str(folder.resolve()) not in sys.path:
        sys.path.insert(0, str(folder.resolve()))
    for path in modules:
        name = path.stem if path.suffix == ".py" else path.name
        if name in sys.modules and getattr(sys.modules[name], "__file__", None) not in (str(path.resolve()),
                                                                                     str(path.resolve() / "__init__.py")):
            raise UserError(f"plugin module {path} is named like the installed module {name!r}; rename it",
                            key="--plugins")
        _guarded(str(path), lambda name=name: importlib.import_module(name))
    return [str(p) for p in modules]
