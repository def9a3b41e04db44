"""LLM4GEN nodes for ComfyUI: put (or link) this folder into ``ComfyUI/custom_nodes/`` and install llm4gen into
ComfyUI's Python (``pip install -e /path/to/llm4gen``). See README.md here for the node graph."""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from llm4gen.comfy import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
except ImportError:  # a checkout that is not pip-installed: use its src/ folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from llm4gen.comfy import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
