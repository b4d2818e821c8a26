"""The method zoo: one file per method, all behind :class:`~vlprompt.methods.base.Method`.

Adding a method = adding one module here that defines a ``Method`` subclass decorated with
``@register``; every module in this package is imported on first use, so the CLI, the DAG and
the report pick it up without further wiring.
"""

from __future__ import annotations

import importlib
import pkgutil

from vlprompt.methods.base import FAMILIES, Method, MethodContext, MethodError, TrainConfig, register, registry

_LOADED = False
# Old names that a published result still uses -> the registered name (none today: every example report names
# its methods as registered, tests/test_dvmi.py checks it).
ALIASES: dict[str, str] = {}


def _load_all() -> None:
    global _LOADED
    if not _LOADED:
        for info in pkgutil.iter_modules(__path__):
            if info.name != "base":
                importlib.import_module(f"{__name__}.{info.name}")
        _LOADED = True


def list_methods() -> list[str]:
    _load_all()
    return sorted(registry)


def get_method(name: str) -> type[Method]:
    """The registered method ``name`` (or the method an old name in ``ALIASES`` now goes by)."""
    _load_all()
    try:
        return registry[ALIASES.get(name, name)]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, list(registry), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise MethodError(f"unknown method {name!r}; {hint}available: {sorted(registry)}") from None


def method_order(names) -> list[str]:
    """``names`` in the report's order: by family (``FAMILIES``: zero-shot first), a family's root method before
    the methods derived from it, then alphabetically; unknown families, then unregistered names, come last."""
    _load_all()

    def key(name: str):
        cls = registry.get(name)
        if cls is None:
            return (len(FAMILIES) + 2, "", 0, name)
        known = cls.family in FAMILIES
        rank = FAMILIES.index(cls.family) if known else len(FAMILIES) + (0 if cls.family else 1)
        depth = sum(1 for c in cls.__mro__ if issubclass(c, Method) and c is not Method)
        return (rank, "" if known else cls.family, depth, name)

    return sorted(set(names), key=key)


__all__ = [
    "FAMILIES",
    "Method",
    "MethodContext",
    "MethodError",
    "TrainConfig",
    "get_method",
    "list_methods",
    "method_order",
    "register",
]
