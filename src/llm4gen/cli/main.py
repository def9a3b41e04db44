"""The `llm4gen` command: one module per command group, registered on the root command by importing them."""

from __future__ import annotations

from . import cache, data, eval, generate, official, shapes, train, webapp  # noqa: F401  (each registers its commands)
from .common import app

__all__ = ["app", "main"]


def main() -> None:
    from ..utils import silence_irrelevant_notices

    silence_irrelevant_notices()  # transformers' torchvision notices on every run (a logging filter; no import)
    app()


if __name__ == "__main__":
    main()
