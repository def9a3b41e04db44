"""ShapesWorld as a training data source (``data: {type: shapesworld}``), generated on the fly.

Registered through the ``llm4gen.data_sources`` entry point, so :func:`llm4gen.data.sources.make_source` finds it
without the trainer knowing ShapesWorld.
"""

from __future__ import annotations

from ..data.sources import DataConfig, Example
from .world import ShapesWorld, ShapesWorldConfig, drop_count_sentence, item_rng, render_scene

__all__ = ["ShapesSource"]


class ShapesSource:
    """ShapesWorld items generated on the fly; ``num_items`` of them make an epoch."""

    def __init__(self, cfg: DataConfig, resolution: int) -> None:
        self.cfg = cfg
        self.world = ShapesWorld(cfg.split, cfg.seed, cfg.num_items,
                                 ShapesWorldConfig(size=resolution, min_objects=cfg.min_objects,
                                                   max_objects=cfg.max_objects, caption_style=cfg.caption_style))

    def __len__(self) -> int:
        return self.cfg.num_items

    def __getitem__(self, index: int) -> Example:
        caption, scene = self.world.caption_of(index)
        if self.drops_count(index):
            caption = drop_count_sentence(caption)[0]
        c = self.world.config
        key = f"shapesworld|{self.cfg.split}|{self.cfg.seed}|{index}|{c.size}|{c.caption_style}"  # the image only
        if (c.min_objects, c.max_objects) != (1, 4):  # other scenes; the default keeps the keys of earlier caches
            key += f"|objects={c.min_objects}-{c.max_objects}"
        return Example(lambda: render_scene(scene, c.size), caption, key)

    def drops_count(self, index: int) -> bool:
        """Whether item ``index`` loses its stated object count (``data.drop_count_sentence``); a draw of its own,
        so the scenes and captions stay those of ``ShapesWorld``."""
        p = self.cfg.drop_count_sentence
        if p <= 0.0:
            return False
        return bool(item_rng(self.cfg.seed, self.cfg.split, index, 0xC0947).random() < p)
