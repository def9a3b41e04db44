"""The llm4gen web app (``llm4gen app``, the ``app`` extra: gradio): long prompts, rendered side by side.

One prompt and one seed are rendered twice: by the **base** conditioning path (CLIP only, 77 tokens) and by
**LLM4GEN** (CLIP + LLM through the CAM), so a user sees what the language model adds. The page counts CLIP and LLM
tokens as the prompt is typed and says, with numbers, when CLIP's window cuts it.

The base render comes from, in this order: ``base_model=`` (a plain Stable Diffusion folder or hub id), a
``base_unet/`` sub-folder of the LLM4GEN model folder (a UNet trained on CLIP only with the same recipe, run with the
model's VAE and CLIP: the bundled model ships its base arm there), or else the LLM4GEN
model's own UNet, VAE and CLIP fed the CLIP-only embeddings. The last is honest only as "the base conditioning path":
that UNet was trained with the LLM tokens, so it is not the same as an independently trained base model.

Everything but :func:`build_app` and :func:`launch` works without gradio, so the logic is testable without a browser
(the end-to-end browser test and the screenshot tool live in the repository's ``tests/browser.py``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .examples import DEMO_PROMPTS
from .images import draw_regions
from .layout import PLACE_EXAMPLES, plan_regions, region_words
from .pipeline import LLM4GenPipeline, LLM4GenXLPipeline
from .regions import Region
from .sampling import DEFAULT_GUIDANCE, DEFAULT_STEPS
from .shapesworld.arms import base_unet_dir, clip_only_pipeline
from .utils import describe_load_error, to_device, validate_prompts

__all__ = [
    "LoadedModel",
    "ModelManager",
    "SideBySide",
    "TokenCounts",
    "build_app",
    "build_base_pipeline",
    "count_tokens",
    "describe_app_error",
    "free_port",
    "generate_side_by_side",
    "launch",
    "parse_regions",
    "load_model",
    "model_summary",
]

APP_TITLE = "LLM4GEN: long prompts, side by side"
# The page's starting prompt: a dense prompt past CLIP's 77 tokens, in the vocabulary the bundled model knows
EXAMPLE_PROMPT = DEMO_PROMPTS[1]
EXAMPLE_PROMPTS = list(DEMO_PROMPTS)  # the page's examples: ShapesWorld prompts the bundled model draws
SAME_UNET_BASE = "the LLM4GEN model's own UNet with CLIP-only conditioning (the base conditioning path)"
BASE_ARM = "the model's base arm (base_unet/: the same recipe trained on CLIP only, at equal compute)"


# ---------------------------------------------------------------------- token counts
@dataclass
class TokenCounts:
    """How many tokens a prompt has for CLIP and for the LLM, and how many each window keeps (specials included)."""

    clip_tokens: int
    clip_window: int
    llm_tokens: int
    llm_window: int

    @property
    def clip_cut(self) -> int:
        return max(0, self.clip_tokens - self.clip_window)

    @property
    def llm_cut(self) -> int:
        return max(0, self.llm_tokens - self.llm_window)

    def message(self) -> str:
        """One line for the page: counts, and a warning with numbers when a window cuts the prompt."""
        if self.llm_cut:
            llm = (f"the LLM path reads {self.llm_window} of its {self.llm_tokens} tokens ({self.llm_cut} cut by its "
                   f"max_length={self.llm_window})")
        else:
            llm = f"the LLM path reads all {self.llm_tokens} of its tokens (window {self.llm_window})"
        if self.clip_cut:
            return (f"⚠️ CLIP sees {self.clip_window} of {self.clip_tokens} tokens; {self.clip_cut} are cut, so the "
                    f"base render never reads the end of the prompt — {llm}.")
        text = (f"CLIP: {self.clip_tokens} / {self.clip_window} tokens · "
                f"LLM: {self.llm_tokens} / {self.llm_window} tokens")
        if self.llm_cut:
            text += f" — ⚠️ {self.llm_cut} LLM tokens are cut by its max_length={self.llm_window}"
        return text + "."


def count_tokens(pipe: Any, prompt: str) -> TokenCounts:
    """CLIP and LLM token counts of ``prompt`` under ``pipe``'s tokenizers, BOS/EOS and the LLM prefix included;
    the windows are CLIP's ``model_max_length`` (77) and the LLM encoder's ``max_length``."""
    tok = getattr(pipe, "tokenizer", None) or getattr(pipe, "tokenizer_2", None)
    if tok is None:
        raise ValueError("This pipeline has no CLIP tokenizer to count tokens with.")
    clip_ids = tok(prompt, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    llm = pipe.llm_encoder
    llm_ids = llm.tokenizer(llm.config.prefix + prompt, add_special_tokens=True, truncation=False,
                            verbose=False)["input_ids"]
    return TokenCounts(len(clip_ids), int(tok.model_max_length), len(llm_ids), int(llm.max_length))


# ---------------------------------------------------------------------- errors
_OOM_HINTS = ("out of memory", "can't allocate memory", "cannot allocate memory", "outofmemory")


_log = logging.getLogger(__name__)
LOCAL_HOSTS = ("localhost", "::1")


def is_exposed(host: str, share: bool) -> bool:
    """Whether a page served on ``host`` (or with a public ``share`` link) can be reached from other machines."""
    return share or not (host in LOCAL_HOSTS or host.startswith("127."))


def page_error(message: str) -> Any:
    """A ``gr.Error`` for the page that the server logs as one line (gradio would print a traceback for it)."""
    import gradio as gr

    _log.warning("llm4gen app: %s", " ".join(message.split()))
    return gr.Error(message, print_exception=False)


def describe_app_error(err: BaseException, action: str) -> str:
    """A message for the page (no traceback) that names what failed, the cause, and what to do."""
    text = str(err).strip() or type(err).__name__
    oom = type(err).__name__ == "OutOfMemoryError" or any(h in text.lower() for h in _OOM_HINTS)
    if oom:
        return (f"Out of memory while {action}. Generate fewer images at once, use fewer/smaller images, or start "
                f"the app on another device (--device cpu, or a GPU with more memory). ({text.splitlines()[0]})")
    if isinstance(err, (OSError, ValueError, TypeError, KeyError, NotImplementedError)):
        return f"Error while {action}: {text}"
    return f"Error while {action} ({type(err).__name__}): {text}"


# ---------------------------------------------------------------------- models
@dataclass
class LoadedModel:
    """An LLM4GEN pipeline and the pipeline that renders its base (CLIP-only) side."""

    ref: str
    pipe: Any
    base: Any
    base_source: str


def _is_xl(ref: str) -> bool:
    index = Path(ref) / "model_index.json"
    if not index.is_file():
        return False
    try:
        info = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return info.get("_class_name") in ("LLM4GenXLPipeline", "StableDiffusionXLPipeline") or "text_encoder_2" in info


def build_base_pipeline(pipe: Any, base_model: str | os.PathLike | None = None) -> tuple[Any, str]:
    """The base side for ``pipe``: ``base_model`` (a plain SD / SDXL folder or hub id) loaded as a diffusers
    pipeline, or else diffusers' own ``StableDiffusion(XL)Pipeline`` built from ``pipe``'s components minus the LLM
    and the adapter (same UNet, VAE, CLIP; a copy of the scheduler). Returns ``(pipeline, description)``."""
    from diffusers import DiffusionPipeline, StableDiffusionXLPipeline

    if base_model is not None:
        ref = os.fspath(base_model)
        index = Path(ref) / "model_index.json"
        if index.is_file() and "llm_encoder" in index.read_text(encoding="utf-8"):
            raise ValueError(f"The base model {ref!r} is itself an LLM4GEN pipeline; point at a plain Stable "
                             "Diffusion folder (e.g. the CLIP-only twin the trainer writes with `llm: null`).")
        try:
            base = DiffusionPipeline.from_pretrained(ref, torch_dtype=pipe.unet.dtype)
        except OSError as err:
            raise describe_load_error(err, "base model", ref) from err
        except (AttributeError, ValueError, TypeError) as err:
            raise ValueError(f"Could not load the base model {ref!r} as a diffusers pipeline: {err}") from err
        base.set_progress_bar_config(disable=True)
        return base.to(pipe.device), f"the separate base model {ref}"
    if isinstance(pipe, LLM4GenXLPipeline):
        comps = {k: v for k, v in pipe.components.items() if k not in ("llm_encoder", "adapter")}
        comps["scheduler"] = type(pipe.scheduler).from_config(pipe.scheduler.config)
        base = StableDiffusionXLPipeline(**comps, add_watermarker=False,
                                         force_zeros_for_empty_prompt=pipe.config.force_zeros_for_empty_prompt)
    else:
        base = clip_only_pipeline(pipe)  # same UNet, VAE, CLIP; its own copy of the scheduler
    base.set_progress_bar_config(disable=True)
    return base, SAME_UNET_BASE


def load_model(
    ref: str | os.PathLike,
    *,
    base_model: str | os.PathLike | None = None,
    device: str = "cpu",
    trust_remote_code: bool = False,
    dtype: Any = None,
) -> LoadedModel:
    """Load an LLM4GEN pipeline folder or hub id on ``device`` (in ``dtype``, a torch dtype; None: the checkpoint's)
    with its base side (see :func:`build_base_pipeline`; when ``base_model`` is not given, a ``base_unet/`` sub-folder
    is run with the model's VAE and CLIP), and the scheduler its folder recommends (``pipe.sampling_defaults``)."""
    ref = os.fspath(ref).strip()
    if not ref:
        raise ValueError("No model given: pick the bundled model or type an LLM4GEN pipeline folder or hub id.")
    looks_local = os.path.isabs(ref) or ref.startswith((".", "~")) or ref.count("/") > 1
    if looks_local and not os.path.exists(os.path.expanduser(ref)):
        raise FileNotFoundError(f"The model path {ref!r} does not exist. Pick a folder written by save_pretrained "
                                "(with a model_index.json) or a hub id.")
    ref = os.path.expanduser(ref)
    cls = LLM4GenXLPipeline if _is_xl(ref) else LLM4GenPipeline
    kwargs = {"trust_remote_code": True} if trust_remote_code else {}
    pipe = cls.from_pretrained(ref, **kwargs)
    pipe.sampling_defaults.apply_scheduler(pipe)
    pipe = to_device(pipe, device, dtype)
    pipe.set_progress_bar_config(disable=True)

    if base_model is None and base_unet_dir(ref) is not None:
        base = clip_only_pipeline(pipe, base_unet_dir(ref))
        base.set_progress_bar_config(disable=True)
        return LoadedModel(ref, pipe, to_device(base, device, pipe.unet.dtype), BASE_ARM)
    base, source = build_base_pipeline(pipe, base_model)
    return LoadedModel(ref, pipe, base.to(device), source)


def model_summary(model: LoadedModel) -> str:
    """The page's line on the picked model: its name, its base side, and what it can draw when its folder says so
    (``llm4gen_sampling.json``'s ``domain``)."""
    text = f"Model: `{model.ref}` · base side: {model.base_source}."
    sampling = getattr(model.pipe, "sampling_defaults", None)
    if sampling is not None and sampling.domain:
        text += f"\n\nThis model knows {sampling.domain}"
    return text


@dataclass
class ModelManager:
    """Loads models on demand and keeps the most recent one (plus any preloaded ones) in memory."""

    device: str = "cpu"
    base_model: str | None = None
    trust_remote_code: bool = False
    preloaded: dict[str, LoadedModel] = field(default_factory=dict)
    # None: any folder or hub id may be loaded; else only these refs (a page reachable from other machines must not
    # read the server's file system at a visitor's word), and never with the model's own code
    allowed: tuple[str, ...] | None = None
    _current: LoadedModel | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, model: LoadedModel) -> None:
        self.preloaded[model.ref] = model

    def get(self, ref: str) -> LoadedModel:
        ref = (ref or "").strip()
        if ref in self.preloaded:
            return self.preloaded[ref]
        if self.allowed is not None and ref not in self.allowed:  # one answer whatever the ref is: nothing to probe
            raise ValueError("This app serves only the models it was started with; pick one from the list (its host "
                             "can add more with llm4gen app --allow-model).")
        with self._lock:  # the token counter and the generate button may ask at the same time
            if self._current is not None and self._current.ref == ref:
                return self._current
            self._current = None  # free the previous model before loading the next
            self._current = load_model(ref, base_model=self.base_model, device=self.device,
                                       trust_remote_code=self.trust_remote_code and self.allowed is None)
            return self._current


def _refuse_unlisted_in_one_line(box: Any, manager: ModelManager) -> None:
    """A crafted API call with a model the locked picker does not list gets the manager's one answer, logged as one
    line (gradio's own check of the choices would raise first and print a traceback)."""
    check = box.preprocess

    def listed_only(payload: Any) -> Any:
        if payload is not None and payload not in manager.allowed:
            try:
                manager.get(payload)
            except ValueError as err:
                raise page_error(str(err)) from None
        return check(payload)

    box.preprocess = listed_only


# ---------------------------------------------------------------------- side-by-side generation
@dataclass
class SideBySide:
    base_images: list[Any]
    llm4gen_images: list[Any]
    seconds: float
    base_source: str


def generate_side_by_side(
    model: LoadedModel,
    prompt: str,
    *,
    negative_prompt: str | None = None,
    steps: int = 20,
    guidance: float = 7.5,
    seed: int = 0,
    num_images: int = 1,
    height: int | None = None,
    width: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    regions: list[Any] | None = None,
) -> SideBySide:
    """Render ``prompt`` with the same seed by the base side and by LLM4GEN; ``progress(done, total, what)`` is
    called after every denoising step (``total`` counts both renders). ``regions`` (:class:`llm4gen.regions.Region`)
    guide the LLM4GEN side only (the pipeline's ``regions=``: region guidance through the LLM's tokens and masked
    cross-attention); the base side stays plain."""
    import torch

    validate_prompts(prompt, "prompt")
    if steps < 1 or num_images < 1:
        raise ValueError(f"steps and number of images must be >= 1 (got {steps} and {num_images}).")
    negative_prompt = negative_prompt or None
    total = 2 * steps
    start = time.perf_counter()
    out = []
    for offset, (label, pipe) in enumerate((("base", model.base), ("LLM4GEN", model.pipe))):
        kwargs: dict[str, Any] = {}
        if progress is not None:
            def step_end(p: Any, i: int, t: Any, cb: dict, _o: int = offset, _label: str = label) -> dict:
                progress(_o * steps + i + 1, total, f"{_label}: step {i + 1}/{steps}")
                return cb

            kwargs["callback_on_step_end"] = step_end
        if regions and pipe is model.pipe:
            kwargs["regions"] = list(regions)
        result = pipe(
            prompt,
            negative_prompt=negative_prompt,
            num_inference_steps=int(steps),
            guidance_scale=float(guidance),
            num_images_per_prompt=int(num_images),
            generator=torch.Generator(device="cpu").manual_seed(int(seed)),
            height=height,
            width=width,
            **kwargs,
        )
        out.append(list(result.images))
    return SideBySide(out[0], out[1], time.perf_counter() - start, model.base_source)


# ---------------------------------------------------------------------- the gradio page
# A gallery with one image shows it as a single large thumbnail as wide as the column, taller than the gallery: keep
# it square and inside the frame (the galleries are 420 px high), so the whole image shows without scrolling.
GALLERY_CSS = ("#base-gallery .thumbnail-lg, #llm4gen-gallery .thumbnail-lg "
               "{max-width: 360px; max-height: 360px; margin: 0 auto;}")


# "auto", or boxes by hand: the example prompt's objects and the cells its place words name
REGION_PLACEHOLDER = "auto - or by hand, one per line:\nyellow star: 0.64,0,1,0.36\ngreen square: 0,0.64,0.36,1"


def parse_regions(text: str | None) -> list[Any] | str:
    """The regions box: ``auto`` (boxes planned from the prompt's own place words, :func:`llm4gen.layout.plan_regions`)
    or one ``phrase: x0,y0,x1,y1`` per line (:meth:`llm4gen.regions.Region.parse`), blank lines skipped; a
    ValueError naming the line otherwise."""
    if (text or "").strip().lower() == "auto":
        return "auto"
    out = []
    for k, line in enumerate((text or "").splitlines(), start=1):
        if line.strip():
            try:
                out.append(Region.parse(line.strip()))
            except ValueError as err:
                raise ValueError(f"line {k}: {err}") from None
    return out


def _version_kwargs(target: Any, **candidates: Any) -> dict[str, Any]:
    """Keep only the keyword arguments ``target`` (a class, or a function or method) accepts (gradio 5 and 6 name a
    few differently and moved some, e.g. ``css`` from ``Blocks`` to ``launch``)."""
    import inspect

    params = inspect.signature(target.__init__ if isinstance(target, type) else target).parameters
    return {k: v for k, v in candidates.items() if k in params}


def _caption(label: str, prompt: str, seed: int, i: int, n: int) -> str:
    which = f", image {i + 1}/{n}" if n > 1 else ""
    return f"{label} · seed {seed}{which} · {prompt}"


def build_app(
    model: str | os.PathLike | LoadedModel | Any | None = None,
    *,
    base_model: str | os.PathLike | None = None,
    device: str = "cpu",
    trust_remote_code: bool = False,
    model_choices: list[str] | None = None,
    default_steps: int = DEFAULT_STEPS,
    default_guidance: float = DEFAULT_GUIDANCE,
    only_listed_models: bool = False,
):
    """The page as a ``gr.Blocks``. ``model`` is the default model: a folder or hub id (loaded on first use), an
    already built :class:`LoadedModel`, or an LLM4GEN pipeline object (its base side is built from it).
    ``model_choices`` are offered in the model box; with ``only_listed_models`` (for a page reachable from other
    machines) the box takes nothing else and no model's own code runs for a model loaded from the page."""
    import gradio as gr

    manager = ModelManager(device=device, base_model=None if base_model is None else os.fspath(base_model),
                           trust_remote_code=trust_remote_code)
    if isinstance(model, (LLM4GenPipeline, LLM4GenXLPipeline)):
        model.set_progress_bar_config(disable=True)
        base, source = build_base_pipeline(model, base_model)
        model = LoadedModel(str(model.name_or_path or "in-memory pipeline"), model, base, source)
    if isinstance(model, LoadedModel):
        manager.add(model)
        default_ref = model.ref
    else:
        default_ref = "" if model is None else os.fspath(model)
    choices = [c for c in [default_ref, *(model_choices or [])] if c]
    choices = list(dict.fromkeys(choices))
    if only_listed_models:
        manager.allowed = tuple(choices)

    def token_info(ref: str, prompt: str) -> str:
        if not prompt or not prompt.strip():
            return "Type a prompt; long, dense descriptions are welcome."
        try:
            counts = count_tokens(manager.get(ref).pipe, prompt)
        except Exception as err:  # the page shows the cause instead of a traceback
            return f"Token counts unavailable: {describe_app_error(err, 'loading the model')}"
        return counts.message()

    def model_info(ref: str) -> str:
        try:
            loaded = manager.get(ref)
        except Exception as err:
            return f"❌ {describe_app_error(err, 'loading the model')}"
        return model_summary(loaded)

    def run(ref, prompt, negative, steps, guidance, seed, num_images, region_text="", progress=gr.Progress()):
        if not prompt or not prompt.strip():
            raise page_error("The prompt is empty: describe the image to generate.")
        try:
            regions = parse_regions(region_text)
        except ValueError as err:
            raise page_error(f"Regions: {err}") from None
        if regions == "auto":
            regions = plan_regions(prompt)
            if not regions:
                gr.Warning(f"Regions 'auto': the prompt names no place for anything ({PLACE_EXAMPLES}); the LLM4GEN "
                           "side is not guided.")
        progress(0, desc="loading the model")
        try:
            loaded = manager.get(ref)
        except Exception as err:
            raise page_error(describe_app_error(err, f"loading the model {ref!r}")) from None
        counts = None
        try:
            counts = count_tokens(loaded.pipe, prompt)
        except Exception:  # counting is informative only
            pass
        if counts is not None and counts.clip_cut:
            gr.Warning(f"CLIP sees {counts.clip_window} of {counts.clip_tokens} tokens; {counts.clip_cut} are cut. "
                       "Only the LLM4GEN side reads the whole prompt.")
        try:
            result = generate_side_by_side(
                loaded, prompt, negative_prompt=negative, steps=int(steps), guidance=float(guidance),
                seed=int(seed), num_images=int(num_images), regions=regions,
                progress=lambda done, total, what: progress(done / total, desc=what),
            )
        except Exception as err:
            raise page_error(describe_app_error(err, "generating")) from None
        n = len(result.llm4gen_images)
        base_items = [(im, _caption("base (CLIP only)", prompt, int(seed), i, n))
                      for i, im in enumerate(result.base_images)]
        label = f"LLM4GEN + {len(regions)} region(s)" if regions else "LLM4GEN"
        llm_items = [(im, _caption(label, prompt, int(seed), i, n)) for i, im in enumerate(result.llm4gen_images)]
        if regions:  # then each image again with the boxes it was guided to
            labelled = [(region_words(prompt, r), r.box) for r in regions]
            llm_items += [(draw_regions(im, labelled), _caption(f"{label}, boxes drawn", prompt, int(seed), i, n))
                          for i, im in enumerate(result.llm4gen_images)]
        status = (f"Generated {n} + {n} image(s) with seed {int(seed)} in {result.seconds:.1f} s. "
                  f"Base side: {result.base_source}."
                  + (f" LLM4GEN side guided by {len(regions)} region(s)." if regions else ""))
        return base_items, llm_items, status

    gallery_kwargs = _version_kwargs(
        gr.Gallery, format="png", columns=2, height=420, object_fit="contain", buttons=["download", "fullscreen"],
        show_download_button=True,
    )
    with gr.Blocks(title=APP_TITLE, analytics_enabled=False, **_version_kwargs(gr.Blocks, css=GALLERY_CSS)) as demo:
        gr.Markdown(
            f"# {APP_TITLE}\n"
            "The same seed is rendered twice: on the left by the **base** path, which reads the prompt through CLIP "
            "alone (77 tokens), on the right by **LLM4GEN**, which also feeds the language model's reading of the "
            "whole prompt through the Cross-Adapter. The difference is what the LLM adds. Optional **regions** "
            "hold words of the prompt to boxes on the LLM4GEN side (region guidance and masked cross-attention); "
            "`auto` plans them from the prompt's place words."
        )
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(label="Prompt", lines=5, max_lines=20, value=EXAMPLE_PROMPT, elem_id="prompt",
                                    placeholder="A long, dense description of the image ...")
                tokens = gr.Markdown(elem_id="token-info")
                gr.Examples([[p] for p in EXAMPLE_PROMPTS], inputs=[prompt], label="Prompts the bundled model can draw",
                            elem_id="examples")
                negative = gr.Textbox(label="Negative prompt", lines=1, elem_id="negative")
                region_box = gr.Textbox(
                    label="Regions for the LLM4GEN side (optional): 'auto', or one 'phrase: x0,y0,x1,y1' per line, "
                          "fractions of the image, y down", lines=2, elem_id="regions", placeholder=REGION_PLACEHOLDER)
            with gr.Column(scale=2):
                model_box = gr.Dropdown(choices=choices, value=default_ref or None,
                                        allow_custom_value=not only_listed_models,
                                        label="Model (LLM4GEN folder or hub id)", elem_id="model")
                if only_listed_models:
                    _refuse_unlisted_in_one_line(model_box, manager)
                with gr.Row():
                    steps = gr.Slider(1, 100, value=default_steps, step=1, label="Steps", elem_id="steps")
                    guidance = gr.Slider(0.0, 20.0, value=default_guidance, step=0.5, label="Guidance",
                                         elem_id="guidance")
                with gr.Row():
                    seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
                    num_images = gr.Slider(1, 8, value=1, step=1, label="Images", elem_id="num-images")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
        info = gr.Markdown(elem_id="model-info")
        with gr.Row():
            base_gallery = gr.Gallery(label="Base: CLIP only", elem_id="base-gallery", **gallery_kwargs)
            llm_gallery = gr.Gallery(label="LLM4GEN: CLIP + LLM", elem_id="llm4gen-gallery", **gallery_kwargs)
        status = gr.Markdown(elem_id="status")

        prompt.change(token_info, [model_box, prompt], tokens, show_progress="hidden", trigger_mode="always_last")
        model_box.change(model_info, model_box, info).then(token_info, [model_box, prompt], tokens)
        demo.load(model_info, model_box, info).then(token_info, [model_box, prompt], tokens)
        button.click(run, [model_box, prompt, negative, steps, guidance, seed, num_images, region_box],
                     [base_gallery, llm_gallery, status])
    return demo


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def launch(
    model: str | os.PathLike | LoadedModel | Any,
    *,
    base_model: str | os.PathLike | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    device: str = "cpu",
    trust_remote_code: bool = False,
    block: bool = True,
    default_steps: int = DEFAULT_STEPS,
    default_guidance: float = DEFAULT_GUIDANCE,
    allowed_models: list[str] | None = None,
):
    """Build the page and serve it (on 127.0.0.1 unless ``host`` says otherwise). With ``block=False`` it returns
    ``(demo, url)`` at once and serves from a background thread; ``demo.close()`` stops it.

    ``allowed_models`` are offered beside ``model``. Served beyond this machine (another ``host``, or ``share``), the
    page loads only those models, never with their own code."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    demo = build_app(model, base_model=base_model, device=device, trust_remote_code=trust_remote_code,
                     default_steps=default_steps, default_guidance=default_guidance, model_choices=allowed_models,
                     only_listed_models=is_exposed(host, share))
    port = port or free_port(host)
    demo.queue(default_concurrency_limit=1)
    _, local_url, share_url = demo.launch(
        server_name=host, server_port=port, share=share, prevent_thread_lock=True, quiet=True, ssr_mode=False,
        inbrowser=False, **_version_kwargs(demo.launch, css=GALLERY_CSS),  # gradio 6 (gradio 5 took it in Blocks)
    )
    url = share_url or local_url or f"http://{host}:{port}/"
    if block:
        try:
            demo.block_thread()
        finally:
            demo.close()
    return demo, url
