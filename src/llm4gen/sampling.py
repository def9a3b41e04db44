"""A model's recommended sampling settings, kept in its folder (``llm4gen_sampling.json``) beside ``model_index.json``.

The settings belong to the model, not to how it was named on the command line: ``llm4gen generate``, ``llm4gen demo``,
``llm4gen app`` and :meth:`llm4gen.LLM4GenPipeline.from_pretrained` (as ``pipe.sampling_defaults``) read them
wherever the model is loaded from, and an explicit argument always wins::

    pipe = LLM4GenPipeline.from_pretrained("models/default")
    image = pipe(prompt, **pipe.sampling_defaults.call_kwargs(num_inference_steps=15)).images[0]

A folder without the file samples with :data:`DEFAULT_STEPS` steps and diffusers' usual guidance 7.5. The file may
also say, in words, what the model knows (``domain``) and give a prompt it can draw (``example_prompt``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_GUIDANCE", "DEFAULT_STEPS", "SAMPLING_FILE", "SamplingDefaults"]

SAMPLING_FILE = "llm4gen_sampling.json"
# One default number of denoising steps for every command (generate, demo, app, the ShapesWorld benchmark) when the
# model's folder recommends none
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 7.5  # diffusers' usual classifier-free guidance scale


@dataclass
class SamplingDefaults:
    """Recommended sampling settings of one model (``llm4gen_sampling.json`` in its folder)."""

    guidance_scale: float = DEFAULT_GUIDANCE
    num_inference_steps: int = DEFAULT_STEPS
    scheduler: str | None = None  # a diffusers scheduler class name, e.g. "DPMSolverMultistepScheduler"
    domain: str | None = None  # one line: what the model can draw
    example_prompt: str | None = None  # a prompt it draws well

    def __post_init__(self) -> None:
        if isinstance(self.guidance_scale, bool) or not isinstance(self.guidance_scale, (int, float)):
            raise ValueError(f"guidance_scale must be a number, got {self.guidance_scale!r}.")
        if isinstance(self.num_inference_steps, bool) or not isinstance(self.num_inference_steps, int) \
                or self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {self.num_inference_steps!r}.")
        for name in ("scheduler", "domain", "example_prompt"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a string, got {value!r}.")
        self.guidance_scale = float(self.guidance_scale)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike | None) -> SamplingDefaults:
        """The settings saved in ``folder``; the library's defaults when ``folder`` is not a local folder (a hub id)
        or has no ``llm4gen_sampling.json``. A file that is not valid raises ValueError naming it and the fix."""
        if folder is None:
            return cls()
        path = Path(os.fspath(folder)).expanduser() / SAMPLING_FILE
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is not valid JSON ({err}); fix or delete it.") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}; fix or delete it.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path} has unknown keys {unknown}; the known ones are {sorted(known)}.")
        try:
            return cls(**data)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the settings to ``folder/llm4gen_sampling.json`` (unset fields left out); returns the path."""
        path = Path(folder) / SAMPLING_FILE
        data = {k: v for k, v in asdict(self).items() if v is not None}
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    def call_kwargs(self, guidance_scale: float | None = None, num_inference_steps: int | None = None
                    ) -> dict[str, Any]:
        """Keyword arguments for a pipeline call: the explicit values given here, else the model's."""
        steps = self.num_inference_steps if num_inference_steps is None else int(num_inference_steps)
        return {"guidance_scale": self.guidance_scale if guidance_scale is None else float(guidance_scale),
                "num_inference_steps": steps}

    def apply_scheduler(self, pipe: Any) -> None:
        """Give ``pipe`` the recommended scheduler class (same noise schedule, from its current config), if it
        differs. An unknown class name raises ValueError."""
        if not self.scheduler or type(pipe.scheduler).__name__ == self.scheduler:
            return
        import diffusers

        cls = getattr(diffusers, self.scheduler, None)
        if cls is None or not hasattr(cls, "from_config"):
            raise ValueError(f"{SAMPLING_FILE} names the scheduler {self.scheduler!r}, which diffusers does not have; "
                             "use a class name such as 'DPMSolverMultistepScheduler'.")
        pipe.scheduler = cls.from_config(pipe.scheduler.config)
