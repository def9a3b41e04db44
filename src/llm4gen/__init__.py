"""llm4gen: make text-to-image diffusion models follow long, dense prompts with the features of an LLM (LLM4GEN).

Importing the package is cheap; the pipelines (which import diffusers' pipeline modules) load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import _compat

__version__ = "0.2.0"

_compat.install()  # old module names (before 0.2's moves) keep working for one release, with a FutureWarning

_LAZY = {
    "CrossAdapter": ".adapter",
    "CrossAdapterConfig": ".adapter",
    "CrossAdapterOutput": ".adapter",
    "LLMEncoder": ".encoders",
    "LLMEncoderOutput": ".encoders",
    "PromptTruncationWarning": ".encoders",
    "FusedPrompt": ".pipeline",
    "LLM4GenPipeline": ".pipeline",
    "LLM4GenXLPipeline": ".pipeline",
    "CoordUNet2DConditionModel": ".unet",
    "Region": ".regions",
    "RegionGuidance": ".regions",
}

__all__ = sorted(_LAZY) + ["__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from .adapter import CrossAdapter, CrossAdapterConfig, CrossAdapterOutput
    from .encoders import LLMEncoder, LLMEncoderOutput, PromptTruncationWarning
    from .pipeline import FusedPrompt, LLM4GenPipeline, LLM4GenXLPipeline
    from .regions import Region, RegionGuidance
    from .unet import CoordUNet2DConditionModel


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'llm4gen' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
