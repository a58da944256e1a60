"""Lazy re-exports for packages (PEP 562): a package's public names are imported from its
modules on first use, so that importing one module of a package (`umx.batch.options` for
`umx --help`) does not import the others, and torch with them."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Sequence
from typing import Any


def lazy_exports(
    namespace: dict[str, Any], modules: Sequence[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The `__getattr__` and `__dir__` of a package that re-exports the names of its `__all__`
    from its `modules`: `__getattr__, __dir__ = lazy_exports(globals(), ("job", "options"))`.

    Args:
        namespace: the package's `globals()`, `__all__` already set.
        modules: the modules defining the names, relative to the package, searched in order.

    Returns:
        `__getattr__`, which imports a name from the first of `modules` that defines it and
        keeps it in the package (or a submodule, as an eager package would have imported it),
        and `__dir__`, which lists the names as if already there.
    """
    package, names = namespace["__name__"], frozenset(namespace["__all__"])

    def __getattr__(name: str) -> Any:
        if name in names:
            for module in modules:
                home = importlib.import_module(f"{package}.{module}")
                if hasattr(home, name):
                    namespace[name] = getattr(home, name)
                    return namespace[name]
        elif importlib.util.find_spec(f"{package}.{name}") is not None:
            return importlib.import_module(f"{package}.{name}")  # `umx.audio` after `import umx`
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*namespace, *names})

    return __getattr__, __dir__
