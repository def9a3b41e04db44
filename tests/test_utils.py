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


def test_write_report_writes_the_full_report_and_a_summary_only_when_records_were_dropped(tmp_path):
    from llm4gen.utils import write_report

    rows = {"config": {"n": 60}, "results": [{"i": i} for i in range(60)]}
    full, summary = write_report(tmp_path / "runs" / "probe.json", rows)
    assert full == tmp_path / "runs" / "probe.json" and summary == tmp_path / "runs" / "probe.summary.json"
    assert json.loads(full.read_text()) == rows
    assert json.loads(summary.read_text()) == {"config": {"n": 60}, "results": {"omitted_items": 60}}
    small = {"config": {"n": 3}, "results": [{"i": i} for i in range(3)]}
    assert write_report(tmp_path / "small.json", small) == [tmp_path / "small.json"]  # nothing to drop: no summary
    assert not (tmp_path / "small.summary.json").exists()
