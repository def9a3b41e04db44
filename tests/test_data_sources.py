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
