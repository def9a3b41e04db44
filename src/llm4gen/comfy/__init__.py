"""ComfyUI custom nodes for LLM4GEN (no ComfyUI import at import time). The ``comfyui/`` folder of the repository is
the package ComfyUI loads from ``custom_nodes/``; it re-exports these mappings."""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, LLM4GenEncode, LLM4GenLoader, LLM4GenTextModel

__all__ = ["LLM4GenEncode", "LLM4GenLoader", "LLM4GenTextModel", "NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
