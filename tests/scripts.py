"""Run the repository's scripts (benchmarks/*.py, research/shapesworld/*.py) inside a test, as their own main()."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(path: str) -> ModuleType:
    """The script at ``path`` (relative to the repository, without ``.py``) as a module, its main() not run."""
    file = ROOT / f"{path}.py"
    spec = importlib.util.spec_from_file_location(file.stem, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(path: str, monkeypatch, *args: str) -> None:
    """Run the script at ``path`` with command-line ``args``."""
    module = load_script(path)
    monkeypatch.setattr(sys, "argv", [f"{Path(path).name}.py", *args])
    module.main()
