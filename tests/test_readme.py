"""The README's Python example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # the first block is the offline example
    assert (tmp_path / "llm4gen.png").is_file()
    assert (tmp_path / "my-llm4gen" / "model_index.json").is_file()
    assert namespace["fused"].prompt_embeds.shape[1] > 77
