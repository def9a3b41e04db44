"""DensePrompts builder: cleaning, length filter, exact and near-duplicate removal, tags, resume, a tiny LLM."""

from __future__ import annotations

import json
import random

import pytest

from llm4gen.data import dense_prompts as dp
from tiny_eval_models import make_tiny_causal_lm


def _sentence(k: int, words: int = 50) -> str:
    rng = random.Random(k)
    vocab = [f"w{rng.randrange(10_000)}" for _ in range(words)]
    return "A scene with " + " ".join(vocab) + "."


def test_word_count_normalize_and_clean():
    assert dp.word_count("A red-brick house, two cats' toys.") == 6
    assert dp.normalize_text("  A Red,  apple!\n") == "a red apple"
    assert dp.clean_generation('Description: "A cat on a mat."\n\nSecond paragraph.') == "A cat on a mat."
    assert dp.clean_generation("Here is a new description:\n\n1. A dog   runs.") == "A dog runs."
    assert dp.clean_generation("   \n ") == ""


def test_shingles_and_near_duplicate_index_by_hand():
    assert dp.shingles("a b c d") == {"a b c", "b c d"}
    assert dp.shingles("a b") == {"a b"}
    index = dp.NearDuplicateIndex(threshold=0.5)
    index.add("a b c d e")  # shingles: abc bcd cde
    # "a b c d x": abc bcd cdx -> 2 shared of 4 distinct -> Jaccard 0.5
    assert index.max_similarity("a b c d x") == pytest.approx(0.5)
    assert index.is_duplicate("a b c d x")
    assert index.max_similarity("x y z") == 0.0
    with pytest.raises(ValueError):
        dp.NearDuplicateIndex(threshold=0.0)


def test_near_duplicates_of_long_prompts():
    base = _sentence(1, 60)
    words = base.split()
    one_word_changed = " ".join(words[:30] + ["zebra"] + words[31:])
    index = dp.NearDuplicateIndex(threshold=0.7)
    index.add(base)
    # one substituted word breaks 3 of 61 shingles: Jaccard 58 / 64
    assert index.max_similarity(one_word_changed) == pytest.approx(58 / 64)
    assert index.is_duplicate(one_word_changed)
    assert not index.is_duplicate(_sentence(2, 60))


def test_tags_from_the_lexicon():
    text = "Two children read a sign that reads 'OPEN' next to a red bus in the city, watercolour painting."
    assert dp.tag_prompt(text) == ["counting", "outdoor", "people", "spatial", "style", "text", "vehicles"]
    assert dp.tag_prompt("nothing here", {"x": {"here"}}) == ["x"]


def test_messages_and_plain_prompt():
    cfg = dp.DensePromptsConfig(model="m", examples=["ex one", "ex two"], topics=["a garden"], num_shots=2)
    messages, topic = dp.build_messages(cfg, random.Random(0))
    assert topic == "a garden" and messages[0]["role"] == "system" and "40 to 140 words" in messages[0]["content"]
    assert sorted(m["content"] for m in messages if m["role"] == "assistant") == ["ex one", "ex two"]
    text = dp.render_prompt(None, messages)
    assert text.endswith("Topic: a garden.\nDescription:") and "Description: ex one" in text or "Description: ex two"
    with pytest.raises(ValueError, match="min_words"):
        dp.DensePromptsConfig(model="m", min_words=50, max_words=40)


class ScriptedLLM:
    """A test double for the generator: returns scripted answers in order."""

    def __init__(self, answers):
        self.answers, self.calls = list(answers), []

    def __call__(self, prompts, seed):
        self.calls.append((len(prompts), seed))
        out, self.answers = self.answers[: len(prompts)], self.answers[len(prompts):]
        return out + [""] * (len(prompts) - len(out))


def test_build_filters_dedupes_and_resumes(tmp_path):
    good = [_sentence(k) for k in range(5)]
    words = good[0].split()
    near = " ".join(words[:20] + ["changed"] + words[21:])
    answers = [good[0], "too short.", good[0].upper(), near, "", good[1], _sentence(9, 200), good[2]]
    cfg = dp.DensePromptsConfig(model="scripted", num_prompts=3, batch_size=4, seed=1)
    out = tmp_path / "dense.jsonl"
    stats = dp.build_dense_prompts(cfg, out, generate=ScriptedLLM(answers), progress=False)
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in recs] == [good[0], good[1], good[2]]
    assert [r["id"] for r in recs] == ["dense-000000", "dense-000001", "dense-000002"]
    assert all(40 <= r["num_words"] <= 140 for r in recs) and recs[0]["model"] == "scripted"
    assert stats["counts"] == {"generated": 8, "kept": 3, "dropped_length": 2, "dropped_exact_duplicate": 1,
                               "dropped_near_duplicate": 1, "dropped_empty": 1}
    assert stats["complete"] and json.loads((tmp_path / "dense.jsonl.stats.json").read_text())["num_prompts"] == 3
    # resume to 5: the existing prompts are counted and deduplicated against; ids continue
    cfg.num_prompts = 5
    more = ScriptedLLM([good[1], good[3], good[4], good[3]])
    stats = dp.build_dense_prompts(cfg, out, generate=more, progress=False)
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in recs[3:]] == [good[3], good[4]] and recs[4]["id"] == "dense-000004"
    assert stats["counts"]["dropped_exact_duplicate"] == 1 + 2 and stats["counts"]["kept"] == 5
    # complete: nothing is generated
    again = ScriptedLLM([])
    dp.build_dense_prompts(cfg, out, generate=again, progress=False)
    assert again.calls == []


def test_build_gives_up_after_max_attempts(tmp_path):
    cfg = dp.DensePromptsConfig(model="scripted", num_prompts=2, batch_size=2, max_attempts=3)
    llm = ScriptedLLM([])
    stats = dp.build_dense_prompts(cfg, tmp_path / "d.jsonl", generate=llm, progress=False)
    assert len(llm.calls) == 3 and not stats["complete"] and stats["counts"]["dropped_empty"] == 6
    assert len({seed for _, seed in llm.calls}) == 3  # each call draws a different seed


@pytest.mark.parametrize("chat", [True, False])
def test_tiny_llm_end_to_end(tmp_path, chat):
    from llm4gen.eval.prompts import read_prompt_records

    model = make_tiny_causal_lm(tmp_path / "lm", chat_template=chat)
    cfg = dp.DensePromptsConfig(model=model, num_prompts=2, min_words=1, max_words=400, batch_size=2,
                                max_new_tokens=12, near_duplicate_threshold=1.0, max_attempts=4)
    stats = dp.build_dense_prompts(cfg, tmp_path / "dense.jsonl", progress=False)
    assert stats["counts"]["generated"] >= 2
    recs = read_prompt_records(tmp_path / "dense.jsonl")  # the prompt file llm4gen eval generate reads
    assert len(recs) == stats["num_prompts"] >= 1
    assert all(r["meta"]["model"] == model for r in recs)


def test_cli_dense_prompts(tmp_path):
    from typer.testing import CliRunner

    from llm4gen.cli import app

    model = make_tiny_causal_lm(tmp_path / "lm")
    (tmp_path / "examples.txt").write_text("First example, a red cat.\n\nSecond example, a blue dog.\n")
    out = tmp_path / "dense.jsonl"
    args = ["data", "dense-prompts", str(out), "--model", model, "--num", "50", "--limit", "1", "--min-words", "1",
            "--max-words", "400", "--max-new-tokens", "8", "--batch-size", "2", "--examples",
            str(tmp_path / "examples.txt"), "--shots", "2", "--near-dup", "1.0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "dense.jsonl.stats.json").read_text())
    assert stats["target"] == 1 and stats["config"]["num_shots"] == 2
    assert len(out.read_text().splitlines()) == stats["num_prompts"]
    bad = CliRunner().invoke(app, ["data", "dense-prompts", str(out), "--model", model, "--min-words", "90",
                                   "--max-words", "50"])
    assert bad.exit_code == 1 and "min_words" in bad.output
