"""ComfyUI entry point: `git clone <this repository> ComfyUI/custom_nodes/llm4gen` registers the LLM4GEN nodes.

ComfyUI imports a custom-nodes folder through its ``__init__.py``; this one loads ``comfyui/__init__.py`` by path
(not by a relative import, so it also works when a tool such as pytest imports this file as a top-level module
from a folder whose name is not a valid package name) and re-exports its node mappings (see comfyui/README.md).
"""

import importlib.util as _util
from pathlib import Path as _Path

_spec = _util.spec_from_file_location(
    "llm4gen_comfyui_nodes", _Path(__file__).resolve().parent / "comfyui" / "__init__.py")
_nodes = _util.module_from_spec(_spec)
_spec.loader.exec_module(_nodes)
NODE_CLASS_MAPPINGS = _nodes.NODE_CLASS_MAPPINGS
NODE_DISPLAY_NAME_MAPPINGS = _nodes.NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
