"""Shared fixtures: tiny models built from configs, saved to temp dirs, loaded back like a user would."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def minilm_path() -> str:
    from llm4gen.encoders import resolve_model_reference
    from llm4gen.tiny import MINILM_REF

    return resolve_model_reference(MINILM_REF)


@pytest.fixture(scope="session")
def tiny_llm_dirs(tmp_path_factory) -> dict[str, str]:
    from llm4gen.tiny import make_tiny_llm

    root = tmp_path_factory.mktemp("tiny-llms")
    return {kind: make_tiny_llm(root / kind, kind=kind) for kind in ("bert", "t5", "llama")}


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory, tiny_llm_dirs) -> str:
    """A saved tiny LLM4GenPipeline (SD1.x) whose LLM is the tiny BERT, referenced by path."""
    from llm4gen import LLMEncoder
    from llm4gen.tiny import build_tiny_pipeline

    work = tmp_path_factory.mktemp("tiny-sd")
    llm = LLMEncoder.from_pretrained(tiny_llm_dirs["bert"], max_length=64, padding="max_length")
    pipe = build_tiny_pipeline(llm=llm, work_dir=work / "parts")
    out = work / "pipeline"
    pipe.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_xl_dir(tmp_path_factory, tiny_llm_dirs) -> str:
    from llm4gen import LLMEncoder
    from llm4gen.tiny import build_tiny_pipeline

    work = tmp_path_factory.mktemp("tiny-xl")
    llm = LLMEncoder.from_pretrained(tiny_llm_dirs["bert"], max_length=64, padding="max_length")
    pipe = build_tiny_pipeline(xl=True, llm=llm, work_dir=work / "parts")
    out = work / "pipeline"
    pipe.save_pretrained(out)
    return str(out)
