"""Small shared helpers."""

from __future__ import annotations

import json

from llm4gen.utils import strip_records


def test_strip_records_drops_per_item_lists_and_keeps_the_rest():
    report = {"config": {"num_prompts": 60, "seeds": [0, 1, 2]},
              "summary": {"base": {"colour": {"mean": 0.7, "ci95": [0.6, 0.8], "n": 60}}},
              "results": {"base": [{"index": i, "colour": 1.0} for i in range(60)]},
              "timings": [0.1] * 51}
    out = strip_records(report)
    assert out["config"] == report["config"] and out["summary"] == report["summary"]
    assert out["results"] == {"base": {"omitted_items": 60}}
    assert out["timings"] == {"omitted_items": 51}
    assert strip_records(report, max_items=100) == report  # nothing is longer: unchanged
    assert len(json.dumps(out)) < len(json.dumps(report)) / 5
    assert report["results"]["base"][0] == {"index": 0, "colour": 1.0}  # the input is not modified
