"""One generic registry type; every component registers by name next to its class."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from bench.errors import UserError

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

# Packages whose modules register components on import. Every module inside is imported once.
PLUGIN_PACKAGES = ("bench.tiers", "bench.models", "bench.data", "bench.methods", "attacks", "defenses")
_loaded = False


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
            if not info.name.split(".")[-1].startswith("_"):
                importlib.import_module(info.name)
