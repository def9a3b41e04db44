"""The package's layers (shared/DESIGN.md): every module imports only from its own layer or below, training and
evaluation never import each other, no two modules import each other, no module reaches for another's private
names, the package's own imports sit at module level, and heavy optional dependencies are imported lazily.

The layer order is written here, lowest first; a new module must be placed in it before this test passes."""

from __future__ import annotations

import ast
import importlib
import sys
import warnings
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "llm4gen"

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("llm4gen._compat", "llm4gen.utils", "llm4gen.images", "llm4gen.stats", "llm4gen.examples",
              "llm4gen.adapter", "llm4gen.encoders", "llm4gen.unet", "llm4gen.attention", "llm4gen.prompt_words",
              "llm4gen.feature_cache", "llm4gen.clip_tokenizer", "llm4gen.clip_checkpoint",
              "llm4gen.denoiser", "llm4gen.sampling")),
    ("regions", ("llm4gen.regions", "llm4gen.layout")),
    ("pipeline", ("llm4gen.pipeline", "llm4gen.tiny")),
    ("scoring", ("llm4gen.scoring",)),
    ("data", ("llm4gen.data",)),
    ("training | eval", ("llm4gen.training", "llm4gen.eval")),
    ("shapesworld", ("llm4gen.shapesworld",)),
    ("apps", ("llm4gen.cli", "llm4gen.app", "llm4gen.comfy", "llm4gen.__main__", "llm4gen")),
]
SIBLINGS_APART = ("llm4gen.training", "llm4gen.eval")  # one layer, but neither may import the other
# the command's modules import the library inside the command that runs, so `llm4gen --help` starts without torch
# (test_the_command_line_starts_without_torch)
LAZY_ENTRY_POINTS = ("llm4gen.cli",)
OPTIONAL_HEAVY = ("gradio", "spacy", "peft", "datasets", "selenium")


def _module_name(path: Path) -> str:
    parts = ("llm4gen", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str], bool, int]]:
    """(absolute module, imported names, at module level, line) of every import in ``path``."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    module = ".".join(base + ([child.module] if child.module else []))
                else:
                    module = child.module or ""
                names = [a.name for a in child.names]
                if child.level and not child.module:  # "from . import x": x is a submodule
                    found.extend((f"{module}.{n}", [], top, child.lineno) for n in names)
                else:
                    found.append((module, names, top, child.lineno))
            elif isinstance(child, ast.Import):
                found.extend((a.name, [], top, child.lineno) for a in child.names)
            visit(child, top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(path.read_text(encoding="utf-8")), True)
    return found


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _layer(module: str) -> int:
    best, depth = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and prefix.count(".") > depth:
                best, depth = i, prefix.count(".")
    assert best is not None, f"{module} is in no layer: place it in tests/test_layers.py's LAYERS"
    return best


def _own(module: str) -> str | None:
    """The package module an import refers to (the longest existing prefix), or None for other packages."""
    while module:
        if module in MODULES:
            return module
        module = module.rpartition(".")[0]
    return None


def _edges() -> list[tuple[str, str, list[str], bool, int]]:
    edges = []
    for name, path in MODULES.items():
        for module, names, top, line in _imports(path):
            if not module.startswith("llm4gen"):
                continue
            target = _own(module)
            assert target is not None, f"{name}:{line} imports {module}, which does not exist"
            if target != name:
                edges.append((name, target, names, top, line))
    return edges


def test_every_module_has_a_layer():
    assert len(MODULES) > 40
    for name in MODULES:
        _layer(name)


def test_no_module_imports_from_a_layer_above_its_own():
    upward = [f"{a} ({LAYERS[_layer(a)][0]}) imports {b} ({LAYERS[_layer(b)][0]}) at line {line}"
              for a, b, _, _, line in _edges() if _layer(b) > _layer(a)]
    assert not upward, "imports that run up a layer:\n" + "\n".join(upward)


def test_training_and_evaluation_do_not_import_each_other():
    t, e = SIBLINGS_APART
    crossing = [f"{a} imports {b}" for a, b, _, _, _ in _edges()
                if (a.startswith(t) and b.startswith(e)) or (a.startswith(e) and b.startswith(t))]
    assert not crossing, crossing


def test_no_import_cycles():
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for a, b, _, _, _ in _edges():
        graph[a].add(b)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_no_module_imports_another_modules_private_names():
    private = [f"{a}:{line} imports {name} from {b}" for a, b, names, _, line in _edges() for name in names
               if name.startswith("_") and not name.startswith("__")]
    assert not private, private


def test_the_packages_own_imports_are_at_module_level():
    lazy = [f"{a}:{line} imports {b} inside a function" for a, b, _, top, line in _edges()
            if not top and not a.startswith(LAZY_ENTRY_POINTS)]
    assert not lazy, lazy


def test_the_command_line_starts_without_torch():
    """`llm4gen --help` and every group's help load typer and rich, not torch, diffusers or transformers."""
    import subprocess
    import sys

    code = ("import sys; from typer.testing import CliRunner; from llm4gen.cli import app\n"
            "for args in ([], ['shapes'], ['eval'], ['data'], ['bench'], ['generate'], ['train'], ['cache'],\n"
            "             ['app']):\n"
            "    result = CliRunner().invoke(app, [*args, '--help'])\n"
            "    assert result.exit_code == 0, (args, result.output)\n"
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_heavy_optional_dependencies_are_imported_lazily():
    eager = [f"{name}:{line} imports {module} at module level" for name, path in MODULES.items()
             for module, _, top, line in _imports(path) if top and module.split(".")[0] in OPTIONAL_HEAVY]
    assert not eager, eager


def test_the_layer_check_sees_a_violation():
    """The checks above read real imports: an upward, a private and a lazy import in a module written for the test
    are all found."""
    fake = PACKAGE / "_layers_probe_tmp.py"
    fake.write_text("from .cli import app\nfrom .utils import _private\n\n"
                    "def f():\n    from .images import make_grid\n")
    try:
        found = _imports(fake)
    finally:
        fake.unlink()
    assert ("llm4gen.cli", ["app"], True, 1) in found
    assert ("llm4gen.utils", ["_private"], True, 2) in found
    assert ("llm4gen.images", ["make_grid"], False, 5) in found
    assert _layer("llm4gen.cli.generate") > _layer("llm4gen.utils")


# ---------------------------------------------------------------------- the old names of moved modules
def test_moved_modules_keep_their_old_import_paths_for_one_release(monkeypatch):
    from llm4gen import _compat

    for old, targets in _compat.MOVED_MODULES.items():
        assert old not in MODULES, f"{old} is both a module and an alias"
        for target in targets:
            assert target in MODULES, f"{old}'s successor {target} does not exist"
    monkeypatch.delitem(sys.modules, "llm4gen.eval.metrics", raising=False)  # imported afresh: it warns once
    with pytest.warns(FutureWarning, match="llm4gen.eval.metrics moved to llm4gen.scoring.metrics"):
        old = importlib.import_module("llm4gen.eval.metrics")
    from llm4gen.eval.score import score_generated
    from llm4gen.scoring.metrics import clip_score

    assert old.clip_score is clip_score and old.score_generated is score_generated


@pytest.mark.parametrize("old, name, new", [
    ("llm4gen.training.data", "parse_entities", "llm4gen.prompt_words"),
    ("llm4gen.training.data", "ImageFolderSource", "llm4gen.data.sources"),
    ("llm4gen.training.data", "ShapesSource", "llm4gen.shapesworld.source"),
    ("llm4gen.training.losses", "AttentionStore", "llm4gen.attention"),
])
def test_moved_names_keep_their_old_import_paths_for_one_release(old, name, new):
    module = importlib.import_module(old)
    with pytest.warns(FutureWarning, match=f"{old}.{name} moved to {new}.{name}"):
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(new), name)
    with pytest.raises(AttributeError), warnings.catch_warnings():  # other names: the usual error, no warning
        warnings.simplefilter("error")
        module.no_such_name  # noqa: B018


def test_names_still_used_where_they_were_are_the_moved_objects():
    from llm4gen.data.sources import DataConfig
    from llm4gen.denoiser import Denoiser
    from llm4gen.training import config, trainer

    assert trainer.Denoiser is Denoiser and config.DataConfig is DataConfig


def test_every_folder_of_modules_is_a_package_the_wheel_ships():
    """A folder of modules without __init__.py imports from a checkout (a namespace package) but is left out of the
    wheel by setuptools' package discovery."""
    from setuptools import find_packages

    shipped = set(find_packages(str(PACKAGE.parent)))
    folders = {".".join(p.parent.relative_to(PACKAGE.parent).parts) for p in PACKAGE.rglob("*.py")}
    assert folders <= shipped, f"not packages: {sorted(folders - shipped)}"
