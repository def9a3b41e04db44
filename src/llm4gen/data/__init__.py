"""Data: training sources (image folders, WebDataset shards, HF datasets, registered types), DensePrompts and
recaptioning."""
