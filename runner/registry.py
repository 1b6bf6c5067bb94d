"""The closed set of layer types a config may name: torch.nn's layers plus the project's own.

Nothing outside this registry is ever constructed, whatever a config or a saved run says.
"""

from __future__ import annotations

import inspect
from functools import lru_cache

from torch import nn

from runner.layers import PROJECT_LAYERS

# Containers and parameter holders that are not layers; Sequential is built by the project itself.
_NOT_LAYERS = {"Module", "ModuleList", "ModuleDict", "ParameterList", "ParameterDict", "Container"}

CONTAINERS = ("Sequential", "Residual")


@lru_cache(maxsize=1)
def layer_types() -> dict[str, type[nn.Module]]:
    """Returns class name -> class for every layer a model config may use."""
    types: dict[str, type[nn.Module]] = {}
    for name in dir(nn):
        obj = getattr(nn, name)
        if inspect.isclass(obj) and issubclass(obj, nn.Module) and name not in _NOT_LAYERS:
            if not name.startswith("_") and not name.startswith("Lazy"):
                types[name] = obj
    types.update(PROJECT_LAYERS)
    return types


def module_type_names(cls: type) -> set[str]:
    """Returns the class names a module counts as for `module:` selectors (subclasses included)."""
    return {base.__name__ for base in cls.__mro__ if issubclass(base, nn.Module)}
