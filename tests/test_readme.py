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


def _expand(pattern: str) -> list[str]:
    """Shell-style brace expansion: "a{.json,.png}" -> ["a.json", "a.png"] (no nesting)."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    return [x for part in m.group(1).split(",") for x in _expand(pattern[: m.start()] + part + pattern[m.end():])]


def test_every_result_file_and_image_the_readme_cites_is_in_the_repository():
    root = README.parent
    text = README.read_text()
    cited = set(re.findall(r"benchmarks/results/[\w./{},*-]+", text)) | set(re.findall(r"\((docs/[\w./-]+)\)", text))
    cited.discard("benchmarks/results/")
    assert len(cited) > 20

    def present(name: str) -> bool:  # a file, or a folder of results that holds some
        if "*" in name:
            return bool(list(root.glob(name)))
        path = root / name
        return path.is_file() or (path.is_dir() and any(path.iterdir()))

    missing = [name for pattern in sorted(cited) for name in _expand(pattern.rstrip(".")) if not present(name)]
    assert not missing, f"README cites files that are not committed: {missing}"
    assert _expand("a{1,2}b{x,y}") == ["a1bx", "a1by", "a2bx", "a2by"]
