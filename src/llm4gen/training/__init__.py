"""Training: the trainer (accelerate), losses and recipes such as the small ShapesWorld CLIP."""
