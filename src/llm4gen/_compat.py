"""Import aliases for names that moved in llm4gen 0.2, kept for one release.

0.2 restored the package's layers (see shared/DESIGN.md): modules moved, and some names left the module that held
them. Old imports keep working and say, once, where the name lives now (a ``FutureWarning``, as diffusers'
deprecations): ``import llm4gen.eval.metrics`` gives a module holding :mod:`llm4gen.scoring.metrics`' public names,
``from llm4gen.training.data import parse_entities`` gives :func:`llm4gen.prompt_words.parse_entities`. Both go in
0.3. New code imports from the new places; the table below is the one list of what moved.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings
from collections.abc import Callable, Mapping
from typing import Any

REMOVED_IN = "0.3"

# old module -> the module(s) that hold its public names now (the first is its main successor)
MOVED_MODULES: dict[str, tuple[str, ...]] = {
    "llm4gen.prompt_cache": ("llm4gen.feature_cache",),
    "llm4gen.training.cache": ("llm4gen.feature_cache",),
    "llm4gen.data.clip_tokenizer": ("llm4gen.clip_tokenizer",),
    "llm4gen.data.shapes": ("llm4gen.shapesworld.world",),
    "llm4gen.eval.shapes": ("llm4gen.shapesworld.scorer",),
    "llm4gen.eval.shapes_bench": ("llm4gen.shapesworld.bench", "llm4gen.shapesworld.arms", "llm4gen.stats"),
    "llm4gen.eval.metrics": ("llm4gen.scoring.metrics", "llm4gen.eval.score"),
    "llm4gen.eval.features": ("llm4gen.scoring.features",),
    "llm4gen.eval.vqa": ("llm4gen.scoring.vqa",),
    "llm4gen.eval.detect": ("llm4gen.scoring.detect",),
    "llm4gen.training.shapes_recipe": ("llm4gen.shapesworld.recipe",),
    "llm4gen.training.small_clip": ("llm4gen.shapesworld.small_clip",),
    "llm4gen.training.small_vae": ("llm4gen.shapesworld.small_vae",),
}


def _warn(old: str, new: str) -> None:
    warnings.warn(f"{old} moved to {new} in llm4gen 0.2; import it from there (the old name goes in llm4gen "
                  f"{REMOVED_IN}).", FutureWarning, stacklevel=3)


def _public_names(module: types.ModuleType) -> list[str]:
    names = getattr(module, "__all__", None)
    return list(names) if names is not None else [n for n in vars(module) if not n.startswith("_")]


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old module names of :data:`MOVED_MODULES` and fills each with its successors' public names."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: Any) -> None:
        return None  # the default module object

    def exec_module(self, module: types.ModuleType) -> None:
        targets = MOVED_MODULES[module.__name__]
        _warn(module.__name__, " and ".join(targets))
        names: list[str] = []
        for target in targets:
            new = importlib.import_module(target)
            for name in _public_names(new):
                setattr(module, name, getattr(new, name))
                names.append(name)
        module.__all__ = names
        module.__doc__ = f"Moved to {' and '.join(targets)} in llm4gen 0.2 (this alias goes in {REMOVED_IN})."


def install() -> None:
    """Put the finder of moved modules in front of the import system (once)."""
    if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedModules())


def moved_attributes(module_name: str, moved: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for names that left ``module_name``: ``moved`` maps each to the module holding it
    now; reading one warns and returns it from there, anything else is the usual AttributeError."""

    def __getattr__(name: str) -> Any:
        if name in moved:
            _warn(f"{module_name}.{name}", f"{moved[name]}.{name}")
            return getattr(importlib.import_module(moved[name]), name)
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}")

    return __getattr__
