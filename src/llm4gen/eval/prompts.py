"""Read prompt files: plain text (one prompt a line), JSON (a list of strings, or of objects with a prompt field),
JSON Lines, or CSV/TSV (a column). Files are UTF-8, with or without a byte-order mark. Errors name the file, the line
or item, and what to pass instead."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from ..utils import read_jsonl, read_text, text_lines

__all__ = ["PROMPT_FIELDS", "read_prompt_records", "read_prompts"]

PROMPT_FIELDS = ("prompt", "text", "caption")  # looked for, in this order, when no column/field is given


def _pick_field(keys: list[str], column: str | None, where: str) -> str:
    if column is not None:
        if column not in keys:
            raise ValueError(f"{where} has no {column!r} field/column; it has {keys}. Pass --column with one of them.")
        return column
    for name in PROMPT_FIELDS:
        if name in keys:
            return name
    if len(keys) == 1:
        return keys[0]
    raise ValueError(f"{where}: which field holds the prompt? It has {keys} and none of {list(PROMPT_FIELDS)}; "
                     "pass --column NAME.")


def _record(value: Any, field: str | None, where: str) -> dict[str, Any]:
    if isinstance(value, str):
        prompt, meta = value, {}
    elif isinstance(value, dict):
        key = _pick_field(list(value), field, where)
        prompt = value[key]
        meta = {k: v for k, v in value.items() if k != key}
    else:
        raise ValueError(f"{where} is a {type(value).__name__}; expected a string or an object with a prompt field.")
    if not isinstance(prompt, str):
        raise ValueError(f"{where}: the prompt is a {type(prompt).__name__} ({prompt!r:.60}), not a string.")
    if not prompt.strip():
        raise ValueError(f"{where}: the prompt is empty.")
    return {"prompt": prompt.strip(), "meta": meta}


def read_prompt_records(path: str | os.PathLike, column: str | None = None) -> list[dict[str, Any]]:
    """Prompts of a file as ``{"prompt": str, "meta": {other fields}}`` records, in file order.

    - ``.txt`` (and any other extension): one prompt a line, cut at its first tab as T2I-CompBench's generator cuts
      it (``{prompt}\\t{anything}``); blank lines are skipped.
    - ``.json``: a list of strings, a list of objects, or an object whose only list value is such a list; the prompt
      is the ``column`` field, else the first of ``prompt``/``text``/``caption``, else the only field.
    - ``.jsonl``: one string or object a line, fields as for JSON.
    - ``.csv`` / ``.tsv``: with a header row; the prompt column is ``column`` or found as for JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Prompt file {str(path)!r} does not exist.")
    suffix = path.suffix.lower()
    records: list[dict[str, Any]] = []
    if suffix == ".json":
        try:
            data = json.loads(read_text(path))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}).") from err
        if isinstance(data, dict):
            lists = [k for k, v in data.items() if isinstance(v, list)]
            if len(lists) != 1:
                raise ValueError(f"{path} is a JSON object; expected a list of prompts (or an object with exactly one "
                                 f"list in it, it has {len(lists)}).")
            data = data[lists[0]]
        if not isinstance(data, list):
            raise ValueError(f"{path} holds a JSON {type(data).__name__}; expected a list of prompts.")
        records = [_record(item, column, f"{path} item {i}") for i, item in enumerate(data)]
    elif suffix == ".jsonl":
        records = [_record(item, column, f"{path}:{line_no}") for line_no, item in read_jsonl(path, objects_only=False)]
    elif suffix in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(read_text(path), newline=""), delimiter="\t" if suffix == ".tsv" else ",")
        keys = list(reader.fieldnames or [])
        if not keys:
            raise ValueError(f"{path} has no header row; the first row must name the columns.")
        key = _pick_field(keys, column, str(path))
        for row_no, row in enumerate(reader, 2):
            value = row.get(key)
            if value is None or not value.strip():
                raise ValueError(f"{path}:{row_no}: the {key!r} column is empty.")
            records.append({"prompt": value.strip(), "meta": {k: v for k, v in row.items() if k != key}})
    else:
        if column is not None:
            raise ValueError(f"--column {column!r} was given but {path} is a plain text file (one prompt a line); "
                             "use a .csv, .tsv, .json or .jsonl file for columns.")
        lines = (line.split("\t")[0].strip() for line in text_lines(read_text(path)))
        records = [{"prompt": line, "meta": {}} for line in lines if line]
    if not records:
        raise ValueError(f"{path} holds no prompts.")
    return records


def read_prompts(path: str | os.PathLike, column: str | None = None) -> list[str]:
    """The prompts of a txt / json / jsonl / csv / tsv file (see :func:`read_prompt_records`)."""
    return [r["prompt"] for r in read_prompt_records(path, column)]
