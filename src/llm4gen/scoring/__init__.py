"""Image and text scorers used by evaluation and data building: CLIP score, FID / IS features, VQA, detectors."""
