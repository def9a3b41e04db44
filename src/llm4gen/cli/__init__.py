"""The `llm4gen` command (``llm4gen --help``); :func:`main` is its entry point."""

from __future__ import annotations

from .common import BUNDLED_GUIDANCE, app, bundled_model_dir
from .main import main

__all__ = ["BUNDLED_GUIDANCE", "app", "bundled_model_dir", "main"]
