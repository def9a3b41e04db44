"""ComfyUI entry point: `git clone <this repository> ComfyUI/custom_nodes/llm4gen` registers the LLM4GEN nodes.

ComfyUI imports a custom-nodes folder as a package through its ``__init__.py``; this one re-exports the node
mappings of ``comfyui/`` (see comfyui/README.md). Nothing else imports this file.
"""

from .comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
