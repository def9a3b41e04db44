"""Which words of a ShapesWorld caption name which object of its scene, and at which tokens.

A mention ("a small red round disc") names an object when its colour word and its noun name exactly one object of
the scene. :data:`NOUN_SHAPES` maps the nouns ShapesWorld captions use to shapes, as the rule parser picks the noun
("round disc" -> "round"); the region planner takes it as its synonyms on ShapesWorld prompts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..prompt_words import colours_named, entity_mentions, token_at_span

__all__ = ["NOUN_SHAPES", "mention_words", "scene_matches", "scene_mentions", "window_token"]

# the nouns ShapesWorld captions use for each shape, as the rule parser picks the noun ("round disc" -> "round")
NOUN_SHAPES = {"circle": "circle", "round": "circle", "disc": "circle", "square": "square", "triangle": "triangle",
               "star": "star", "ring": "ring", "cross": "cross", "plus": "cross"}


def window_token(offsets: list[tuple[int, int]], span: tuple[int, int], prefix_len: int, limit: int | None
                 ) -> int | None:
    """:func:`token_at_span`, None also when the token lies at or beyond ``limit`` (outside the window read)."""
    t = token_at_span(offsets, span, prefix_len)
    return None if t is None or (limit is not None and t >= limit) else t


def scene_matches(text: str, scene: Any) -> Iterator[tuple[tuple[int, int], tuple[tuple[int, int], ...], int]]:
    """(noun span, attribute spans, object index) for each mention whose colour word and noun name exactly one object
    of a ShapesWorld ``scene``."""
    for ent, attrs in entity_mentions(text, "rule"):
        shape = NOUN_SHAPES.get(text[ent[0]:ent[1]].lower())
        colours = colours_named(text, attrs)
        match = [k for k, o in enumerate(scene.objects) if o.shape == shape and o.colour in colours]
        if len(match) == 1:
            yield ent, attrs, match[0]


def scene_mentions(text: str, scene: Any, offsets: list[tuple[int, int]], prefix_len: int = 0,
                   limit: int | None = None) -> list[tuple[list[int], int]]:
    """(token positions, object index) for each mention in a ShapesWorld caption whose colour word and noun name
    exactly one object of ``scene`` ("a small red round disc" -> the red circle); the positions are the noun's and
    its attributes' tokens (``offsets``: a fast tokenizer's offset mapping), those at or beyond ``limit`` left out."""
    out = []
    for ent, attrs, k in scene_matches(text, scene):
        tokens = [window_token(offsets, span, prefix_len, limit) for span in (ent, *attrs)]
        tokens = [t for t in tokens if t is not None]
        if tokens:
            out.append((tokens, k))
    return out


def mention_words(text: str, scene: Any, offsets: list[tuple[int, int]], prefix_len: int = 0,
                  limit: int | None = None) -> list[tuple[int | None, int | None, int]]:
    """(noun token, colour token, object index) for each mention :func:`scene_mentions` matches: "a small red circle"
    gives the tokens of "circle" and "red" and the red circle's index. A word's token is None when the tokenizer did
    not reach it or it lies at or beyond ``limit``."""
    out = []
    for ent, attrs, k in scene_matches(text, scene):
        colour = scene.objects[k].colour
        span = next((a for a in attrs if colours_named(text, [a]) == {colour}), None)
        out.append((window_token(offsets, ent, prefix_len, limit),
                    None if span is None else window_token(offsets, span, prefix_len, limit), k))
    return out
