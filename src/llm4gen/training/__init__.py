"""Training: the trainer (accelerate), its config, the batch order and the losses."""
