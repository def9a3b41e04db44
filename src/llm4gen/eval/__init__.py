"""Evaluation: scorers and benchmark runners."""
