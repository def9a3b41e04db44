"""Evaluation: the generation runner and benchmark runners (T2I-CompBench, DPG-Bench, scoring a generated folder).

The scorers they use are in :mod:`llm4gen.scoring`."""
