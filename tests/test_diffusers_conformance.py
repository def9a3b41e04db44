"""diffusers' own generic pipeline tests, run against LLM4GenPipeline and LLM4GenXLPipeline (opt-in).

Point ``LLM4GEN_DIFFUSERS_TESTS`` at a diffusers source checkout (the folder holding ``tests/``) to run them; without it
this module is skipped. Its ``tests/`` package is imported under the name ``diffusers_tests``, against the installed
diffusers, and its test classes are subclassed with our tiny components (``llm4gen.tiny``) and nothing else changed:

* ``TestLLM4GenPipeline`` / ``TestLLM4GenPipelineMemory`` / ``TestLLM4GenPipelineIPAdapter``: the pytest framework of
  ``tests/pipelines/stable_diffusion/test_stable_diffusion.py`` (``PipelineTesterMixin`` of
  ``tests/pipelines/testing_utils``, ``MemoryTesterMixin``, ``IPAdapterTesterMixin``);
* ``TestLLM4GenXLPipeline``: the unittest classes of ``tests/pipelines/stable_diffusion_xl/test_stable_diffusion_xl.py``
  (``PipelineTesterMixin``, ``SDFunctionTesterMixin``, ``IPAdapterTesterMixin``, ``PipelineLatentTesterMixin`` of
  ``tests/pipelines/test_pipelines_common.py``).

The tests that cannot apply to a pipeline with two more components are marked ``xfail(strict=True)`` with the reason
(``DEVIATIONS`` below), so a deviation that starts passing is reported too. How to run it and the counts of the last
run: docs/reliability.md, "diffusers conformance".
"""

from __future__ import annotations

import ast
import contextlib
import copy
import functools
import importlib
import importlib.util
import inspect
import os
import sys
import tempfile
import textwrap
from unittest import mock

import pytest

CHECKOUT = os.environ.get("LLM4GEN_DIFFUSERS_TESTS")
if not CHECKOUT:
    pytest.skip(
        "diffusers conformance is opt-in: set LLM4GEN_DIFFUSERS_TESTS=/path/to/diffusers (a source checkout whose "
        "tests/ can be imported); see docs/reliability.md",
        allow_module_level=True,
    )
if not os.path.isfile(os.path.join(CHECKOUT, "tests", "pipelines", "testing_utils", "common.py")):
    raise pytest.UsageError(
        f"LLM4GEN_DIFFUSERS_TESTS={CHECKOUT!r} is not a diffusers source checkout with tests/pipelines/testing_utils/; "
        "point it at the folder that holds diffusers' tests/ (git clone https://github.com/huggingface/diffusers)."
    )


def _import_diffusers_tests(checkout: str, name: str = "diffusers_tests"):
    """diffusers' ``tests`` package under another name, so that it cannot clash with ours; its relative imports work."""
    if name not in sys.modules:
        root = os.path.join(checkout, "tests")
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(root, "__init__.py"), submodule_search_locations=[root]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_import_diffusers_tests(CHECKOUT)
try:
    sd_tests = importlib.import_module("diffusers_tests.pipelines.stable_diffusion.test_stable_diffusion")
    xl_tests = importlib.import_module("diffusers_tests.pipelines.stable_diffusion_xl.test_stable_diffusion_xl")
except ImportError as err:
    raise pytest.UsageError(
        f"diffusers' tests in {CHECKOUT!r} do not import ({err}). They need their test dependencies "
        "(e.g. `pip install parameterized requests-mock`); see docs/reliability.md."
    ) from err

from llm4gen import LLM4GenPipeline, LLM4GenXLPipeline, LLMEncoder  # noqa: E402
from llm4gen.tiny import build_tiny_pipeline, make_tiny_llm  # noqa: E402

_WORK = tempfile.mkdtemp(prefix="llm4gen-conformance-")


@functools.cache
def _tiny_parts(xl: bool) -> dict:
    llm = LLMEncoder.from_pretrained(make_tiny_llm(os.path.join(_WORK, "tiny-llm")), max_length=16)
    return dict(build_tiny_pipeline(xl=xl, llm=llm, work_dir=os.path.join(_WORK, "xl" if xl else "sd")).components)


def _tiny_components(xl: bool) -> dict:
    """Fresh tiny components of an LLM4GEN pipeline (``llm4gen.tiny``: random weights from a fixed seed, 32 px, an
    LLM of 16 tokens), as diffusers' ``get_dummy_components`` gives: new objects at each call, same weights."""
    return copy.deepcopy(_tiny_parts(xl))


@contextlib.contextmanager
def _text_side_includes_llm_parts(test):
    """For diffusers' ``test_encode_prompt_works_in_isolation``: it keeps the components whose names contain "text" or
    "tokenizer" for its text-only pipeline and drops them for the other. An LLM4GEN pipeline's text side also has
    ``llm_encoder`` and ``adapter``, so they follow ``text_encoder`` here; and diffusers' ``ReturnNameVisitor``
    looks the pipeline class up by name in ``diffusers.pipelines``, so it is shown our ``encode_prompt`` instead."""
    ours = test.pipeline_class

    def build(**components):
        text = any(components.get(name) is not None for name in ("text_encoder", "text_encoder_2"))
        for name in ("llm_encoder", "adapter"):
            components[name] = test._components[name] if text else None
        return ours(**components)

    build.encode_prompt = ours.encode_prompt  # the test returns early, testing nothing, without it

    def source_tree(visitor, cls=None, attribute_name="encode_prompt"):
        return ast.parse(textwrap.dedent(inspect.getsource(getattr(ours, attribute_name))))

    from diffusers.utils.source_code_parsing_utils import ReturnNameVisitor

    test.pipeline_class = build
    try:
        with mock.patch.object(ReturnNameVisitor, "get_ast_tree", source_tree):
            yield
    finally:
        del test.pipeline_class


def _mark(cls: type, reasons: dict[str, str], mark=functools.partial(pytest.mark.xfail, strict=True)) -> None:
    """Mark inherited tests of ``cls`` (strict expected failures by default), each with its reason; the tests
    themselves are diffusers', unchanged."""
    for name, reason in reasons.items():
        base = getattr(cls, name)

        @functools.wraps(base)
        def test(self, *args, _base=base, **kwargs):
            return _base(self, *args, **kwargs)

        setattr(cls, name, mark(reason=reason)(test))


# What cannot apply to a pipeline with two more components, and why. Shared reasons first.
_PIXELS = ("compares against hard-coded pixel values (and the 64 px size) of diffusers' own dummy weights; ours are "
           "other random weights, 32 px")
_CLIP_77 = ("passes raw 77-token CLIP embeddings as prompt_embeds (or expects 77 tokens back): LLM4GEN's embeddings "
            "are fused, 77 CLIP tokens + the LLM's, and raw CLIP ones are refused with a message (issue 43, point 3)")
_BY_NAME = ("builds StableDiffusionXLPipeline (or its img2img sibling) by name from our components, which include "
            "llm_encoder and adapter: that class does not take them")
_HUB = "loads one of diffusers' hub checkpoints into StableDiffusionPipeline by name: nothing of ours, and offline here"
_LLM_REFERENCE = ("expects a weights file named with the variant in every model folder; by default the LLM is saved "
                  "as a reference (llm_encoder/llm4gen_encoder.json, no weights); with save_llm_weights=True it is "
                  "model.<variant>.safetensors (tests/test_pipeline_diffusers_contract.py)")

SD_DEVIATIONS = {
    "test_stable_diffusion_ddim": _PIXELS,
    "test_stable_diffusion_lcm": _PIXELS,
    "test_stable_diffusion_lcm_custom_timesteps": _PIXELS,
    "test_stable_diffusion_ddim_factor_8": _PIXELS,
    "test_stable_diffusion_pndm": _PIXELS,
    "test_stable_diffusion_k_lms": _PIXELS,
    "test_stable_diffusion_k_euler_ancestral": _PIXELS,
    "test_stable_diffusion_k_euler": _PIXELS,
    "test_stable_diffusion_negative_prompt": _PIXELS,
    "test_stable_diffusion_height_width_opt": "expects the sizes of diffusers' dummy UNet and VAE (64 px by default)",
    "test_stable_diffusion_prompt_embeds": _CLIP_77,
    "test_stable_diffusion_negative_prompt_embeds": _CLIP_77,
    "test_stable_diffusion_long_prompt": _CLIP_77,
    "test_serialization_with_variants": _LLM_REFERENCE,
}
XL_DEVIATIONS = {
    "test_stable_diffusion_xl_euler": _PIXELS,
    "test_stable_diffusion_xl_euler_lcm": _PIXELS,
    "test_stable_diffusion_xl_euler_lcm_custom_timesteps": _PIXELS,
    "test_ip_adapter": _PIXELS,
    "test_stable_diffusion_ays": _BY_NAME,
    "test_stable_diffusion_two_xl_mixture_of_denoiser_fast": _BY_NAME,
    "test_stable_diffusion_xl_negative_conditions": _BY_NAME,
    "test_stable_diffusion_xl_save_from_pretrained": _BY_NAME,
    "test_stable_diffusion_xl_offloads": _BY_NAME,
    "test_pipeline_interrupt": _BY_NAME,
    "test_serialization_with_variants": _LLM_REFERENCE,
}
SD_NOT_OURS = {  # skipped: they do not run our pipeline at all
    "test_stable_diffusion_no_safety_checker": _HUB,
    "test_pipeline_accept_tuple_type_unet_sample_size": _HUB,
}


class _OurComponents:
    xl = False

    def get_dummy_components(self, time_cond_proj_dim=None):
        self._components = _tiny_components(self.xl)
        return dict(self._components)


class _OurTextSide:
    def test_encode_prompt_works_in_isolation(self):
        with _text_side_includes_llm_parts(self):
            super().test_encode_prompt_works_in_isolation()


# ---------------------------------------------------------------------------------------------------------- SD 1.x
class _SDConfig(_OurComponents, sd_tests.StableDiffusionPipelineTesterConfig):
    pipeline_class = LLM4GenPipeline
    output_shape = (3, 32, 32)


class TestLLM4GenPipeline(_OurTextSide, _SDConfig, sd_tests.TestStableDiffusionPipeline):
    pass


_mark(TestLLM4GenPipeline, SD_DEVIATIONS)
_mark(TestLLM4GenPipeline, SD_NOT_OURS, pytest.mark.skip)


class TestLLM4GenPipelineMemory(_SDConfig, sd_tests.MemoryTesterMixin):
    pass


class TestLLM4GenPipelineIPAdapter(_SDConfig, sd_tests.IPAdapterTesterMixin):
    pass


# ---------------------------------------------------------------------------------------------------------- SDXL
class TestLLM4GenXLPipeline(_OurTextSide, _OurComponents, xl_tests.StableDiffusionXLPipelineFastTests):
    pipeline_class = LLM4GenXLPipeline
    xl = True


_mark(TestLLM4GenXLPipeline, XL_DEVIATIONS)
