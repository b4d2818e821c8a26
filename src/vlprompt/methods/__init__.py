"""The method zoo: one file per method, all behind :class:`~vlprompt.methods.base.Method`.

Adding a method = adding one module here that defines a ``Method`` subclass decorated with
``@register``; every module in this package is imported on first use, so the CLI, the DAG and
the report pick it up without further wiring.
"""

from __future__ import annotations

import importlib
import pkgutil

from vlprompt.methods.base import Method, MethodContext, MethodError, TrainConfig, register, registry

_LOADED = False


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
    _load_all()
    try:
        return registry[name]
    except KeyError:
        raise MethodError(f"unknown method {name!r}; available: {sorted(registry)}") from None


__all__ = ["Method", "MethodContext", "MethodError", "TrainConfig", "get_method", "list_methods", "register"]
