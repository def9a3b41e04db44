"""Data: ShapesWorld (a synthetic compositional world) and the offline CLIP tokenizer."""
