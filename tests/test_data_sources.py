"""Training data sources: the registry of data.type values (built-in, registered, entry points)."""

from __future__ import annotations

import pytest
from PIL import Image

from llm4gen.data import sources
from llm4gen.data.sources import DataConfig, Example, make_source, register_source, source_types


def test_built_in_and_entry_point_types_are_known():
    types = source_types()
    assert {"imagefolder", "hf", "webdataset"} <= set(types)
    assert "shapesworld" in types  # declared as an 'llm4gen.data_sources' entry point, not imported by the trainer
    assert DataConfig().type == "shapesworld"


def test_a_registered_source_is_built_by_make_source(monkeypatch):
    monkeypatch.setattr(sources, "_SOURCES", dict(sources._SOURCES))  # this test's registration stays here

    class Solid:
        def __init__(self, cfg: DataConfig, resolution: int) -> None:
            self.cfg, self.resolution = cfg, resolution

        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int) -> Example:
            return Example(lambda: Image.new("RGB", (self.resolution, self.resolution)), f"item {i}", f"solid|{i}")

    with pytest.raises(ValueError, match="data.type must be one of .*got 'solid'.*register_source"):
        DataConfig(type="solid")
    register_source("solid", Solid)
    assert "solid" in source_types()
    source = make_source(DataConfig(type="solid"), 16)
    assert isinstance(source, Solid) and source.resolution == 16
    assert source[2].caption == "item 2" and source[2].load_image().size == (16, 16)
    with pytest.raises(ValueError, match="plain name"):
        register_source("no spaces", Solid)


def test_make_source_names_the_known_types_for_an_unknown_one():
    cfg = DataConfig()
    cfg.type = "nonesuch"  # past the config's own check, as a hand-built config could be
    with pytest.raises(ValueError, match=r"data.type must be one of \(.*'imagefolder'.*\), got 'nonesuch'"):
        make_source(cfg, 32)


def test_captions_with_a_byte_order_mark_and_other_encodings(tmp_path):
    import io
    import json
    import tarfile

    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    (tmp_path / "metadata.jsonl").write_text("\ufeff" + json.dumps({"file_name": "a.png", "text": "a cat"}) + "\n",
                                             encoding="utf-8")
    folder = make_source(DataConfig(type="imagefolder", path=str(tmp_path)), 8)
    assert folder[0].caption == "a cat"
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, format="PNG")
    for shard, caption in (("s.tar", "\ufeffa red cube".encode()), ("latin.tar", "caf\xe9".encode("latin-1"))):
        with tarfile.open(tmp_path / shard, "w") as tar:
            for name, data in (("k.png", png.getvalue()), ("k.txt", caption)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    assert make_source(DataConfig(type="webdataset", path=str(tmp_path / "s.tar")), 8)[0].caption == "a red cube"
    with pytest.raises(ValueError, match=r"latin\.tar: k\.txt is not UTF-8 text"):
        make_source(DataConfig(type="webdataset", path=str(tmp_path / "latin.tar")), 8)
