"""Build hook (the project's metadata is in pyproject.toml): a built wheel carries the bundled ShapesWorld model.

``models/default`` (~46 MB, committed once in git, in this one place) is copied into the wheel as package data,
``llm4gen/models/default``, so a plain ``pip install <checkout>`` has a trained model: ``llm4gen demo``,
``llm4gen generate`` and ``llm4gen app`` use it from any folder (``llm4gen.cli.common.bundled_model_dir``). An
editable install (``pip install -e``, ``make install``) copies nothing: it finds the checkout's ``models/default``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

MODEL = Path(__file__).resolve().parent / "models" / "default"


class BuildPyWithBundledModel(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        if not (MODEL / "model_index.json").is_file():
            raise SystemExit(f"{MODEL} is missing: the wheel would have no trained model. Build from a full checkout "
                             "(the bundled model is committed in git) or an sdist made from one.")
        target = Path(self.build_lib) / "llm4gen" / "models" / "default"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(MODEL, target, ignore=shutil.ignore_patterns("__pycache__", ".*"))


setup(cmdclass={"build_py": BuildPyWithBundledModel})
