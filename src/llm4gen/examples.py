"""Example prompts shared by `llm4gen demo` and the web app (no heavy imports: the CLI loads this module)."""

from __future__ import annotations

__all__ = ["DEMO_PROMPTS", "DEMO_SCENES"]

# In ShapesWorld's vocabulary (the bundled model's world); the last two run past CLIP's 77 tokens
DEMO_PROMPTS = [
    "On a plain white background there is a large red circle in the upper left corner and a small blue square in the "
    "lower right corner.",
    "The picture is an abstract arrangement of plain geometric shapes, laid out flat like paper cut-outs on a table. "
    "The composition feels balanced, although the figures are not arranged in any strict grid. There is no text, no "
    "frame and no perspective; everything lies on the same flat plane. In total there are two figures in the scene. "
    "The background is a uniform black colour. A large yellow star sits in the upper right corner. A small green "
    "square sits in the lower left corner. The green square is to the left of the yellow star.",
    "The image shows a minimal, diagram-like scene rendered with crisp edges and evenly saturated colours, a bit like "
    "a page from an old geometry textbook. Everything sits on a plain grey backdrop. In total there are three figures "
    "in the scene. A large red star sits on the left side, halfway down. A small cyan ring sits in the upper right "
    "corner. A large purple triangle sits near the bottom edge, horizontally centred. The red star is to the left of "
    "the purple triangle.",
]

# What each demo prompt asks for, as ShapesWorld scene graphs (llm4gen.shapesworld.world.Scene.from_dict), in the same
# order: the scorer (llm4gen.shapesworld.scorer.score_image) checks an image of DEMO_PROMPTS[i] against DEMO_SCENES[i].
# Centres sit in the cells the prompts name (ShapesWorld's grid, edges 0.36 and 0.64); relations are the prompts'.
DEMO_SCENES = [
    {"background": "white", "relations": [],
     "objects": [{"colour": "red", "shape": "circle", "size": "large", "x": 0.22, "y": 0.22},
                 {"colour": "blue", "shape": "square", "size": "small", "x": 0.8, "y": 0.8}]},
    {"background": "black", "relations": [[1, "left of", 0]],
     "objects": [{"colour": "yellow", "shape": "star", "size": "large", "x": 0.78, "y": 0.22},
                 {"colour": "green", "shape": "square", "size": "small", "x": 0.2, "y": 0.8}]},
    {"background": "grey", "relations": [[0, "left of", 2]],
     "objects": [{"colour": "red", "shape": "star", "size": "large", "x": 0.22, "y": 0.5},
                 {"colour": "cyan", "shape": "ring", "size": "small", "x": 0.8, "y": 0.2},
                 {"colour": "purple", "shape": "triangle", "size": "large", "x": 0.5, "y": 0.78}]},
]
