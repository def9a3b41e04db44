"""Files that are damaged or in the wrong encoding are named with what to do (issue 39)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from llm4gen import CrossAdapter
from llm4gen.data.sources import DataConfig, make_source


def _image_folder(root, metadata: bytes):
    root.mkdir()
    Image.new("RGB", (8, 8), "red").save(root / "a.png")
    (root / "metadata.jsonl").write_bytes(metadata)
    return root


def test_a_latin1_metadata_file_is_named_with_its_line_not_the_caption_column(tmp_path):
    good = json.dumps({"file_name": "a.png", "text": "a red square"}).encode()
    latin1 = '{"file_name": "a.png", "text": "a caf\u00e9 on the left"}'.encode("latin-1")
    folder = _image_folder(tmp_path / "latin1", good + b"\n" + latin1 + b"\n")
    column = latin1.index(b"\xe9") + 1
    with pytest.raises(ValueError, match=rf"metadata.jsonl:2 is not UTF-8 text \(byte 0xe9 at column {column}\).*iconv"
                       ) as info:
        make_source(DataConfig(type="imagefolder", path=str(folder)), 8)
    assert "caption_column" not in str(info.value)
    # a byte-order mark (as some editors write) is fine; a missing caption column still gets its advice
    bom = _image_folder(tmp_path / "bom", b"\xef\xbb\xbf" + good + b"\n")
    assert make_source(DataConfig(type="imagefolder", path=str(bom)), 8)[0].caption == "a red square"
    with pytest.raises(ValueError, match="no 'caption' field.*data.caption_column"):
        make_source(DataConfig(type="imagefolder", path=str(bom), caption_column="caption"), 8)


def test_adapter_config_that_disagrees_with_its_weights_is_named(tmp_path):
    CrossAdapter(clip_dim=32, llm_dim=24, num_heads=2).save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "config.json").read_text())
    (tmp_path / "adapter" / "config.json").write_text(json.dumps({**config, "llm_dim": 48}))
    with pytest.raises(ValueError, match=r"adapter.* does not match its config.json: layers.0.llm_proj.weight should "
                                         r"have shape \(32, 48\) .* weights have \(32, 24\).*restore the config.json"
                       ) as info:
        CrossAdapter.from_pretrained(tmp_path / "adapter")
    assert "low_cpu_mem_usage" not in str(info.value)
    with pytest.raises(ValueError, match=r"'.*adapter' does not match"):  # as a pipeline's subfolder, too
        CrossAdapter.from_pretrained(tmp_path, subfolder="adapter")
