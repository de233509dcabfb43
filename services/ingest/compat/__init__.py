"""The compatibility routes (issue 12): one module per seed system, ``s<N>_<name>.py``, each
exposing its Flask ``blueprint`` (or a list, ``blueprints``). ``BLUEPRINTS`` finds whichever exist,
so a system's routes are added by adding its module; ``services.ingest.app`` registers them.
Shared machinery is in ``framework``.

``BLUEPRINTS`` is computed on first use, not at import: ``framework`` is imported by core modules
(the workspace settings), and importing every route module with it would import in a circle.
"""

from __future__ import annotations

import pkgutil
import re
from importlib import import_module
from typing import Any

from flask import Blueprint

_SYSTEM_MODULE = re.compile(r"s\d+_\w+")


def blueprints() -> list[Blueprint]:
    """The blueprints of every ``s<N>_*`` module in this package, in module name order."""
    found: list[Blueprint] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not _SYSTEM_MODULE.fullmatch(info.name):
            continue
        module = import_module(f".{info.name}", __name__)
        single = getattr(module, "blueprint", None)
        if isinstance(single, Blueprint):
            found.append(single)
        found.extend(bp for bp in getattr(module, "blueprints", ()) if isinstance(bp, Blueprint))
    return found


def __getattr__(name: str) -> Any:
    if name == "BLUEPRINTS":
        return blueprints()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
