"""`python -m llm4gen` runs the `llm4gen` command (handy under `accelerate launch -m llm4gen ...`)."""

from .cli import main

main()
