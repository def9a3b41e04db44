"""DensePrompts: long, dense text-to-image prompts written by a local instruction LLM from few-shot examples.

The paper's DensePrompts set has 7,000 prompts of 40-140 words written by an LLM from a few hand-written examples.
:func:`build_dense_prompts` does the same with any transformers causal LM (``Qwen/Qwen2.5-7B-Instruct``, Llama,
Mistral, ...): each request shows ``num_shots`` examples drawn from the pool and asks for one new description of a
topic drawn from :data:`TOPICS`; the answer is cleaned, length-filtered (``min_words``-``max_words``), deduplicated
(exact after normalisation, and near-duplicates by word 3-gram Jaccard similarity >= ``near_duplicate_threshold``),
tagged by a keyword lexicon (:data:`TAG_LEXICON`) and appended to a JSON Lines file:
``{"id", "prompt", "num_words", "tags", "topic", "model", "seed"}`` - the prompt file ``llm4gen eval generate``
reads. The run is resumable: it reads the file it appends to, counts what is there, and continues until
``num_prompts`` lines exist, deduplicating against them too. ``stats.json`` next to it counts every drop.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..utils import describe_load_error, read_jsonl, read_text

__all__ = ["DEFAULT_EXAMPLES", "TAG_LEXICON", "TOPICS", "DensePromptsConfig", "NearDuplicateIndex",
           "build_dense_prompts", "build_messages", "clean_generation", "normalize_text", "read_examples",
           "render_prompt", "shingles", "tag_counts", "tag_prompt", "word_count"]

DEFAULT_EXAMPLES = [
    "A cozy reading nook bathed in late-afternoon light: a deep green velvet armchair sits beside a tall window with "
    "white muslin curtains, a knitted cream blanket draped over one arm. On the small round walnut side table rest a "
    "steaming cup of tea on a blue saucer, a stack of three old hardcover books and a pair of round glasses. A ginger "
    "cat sleeps curled on the cushion, and a potted fern hangs from the ceiling in the upper left corner.",
    "A busy night market street in the rain, seen from a low angle. Red and yellow paper lanterns hang in rows above "
    "wooden stalls selling skewers, dumplings and bright fruit. In the foreground a young woman in a transparent "
    "raincoat holds a black umbrella and looks at a neon sign reading 'NOODLES' in blue letters; puddles on the dark "
    "asphalt reflect the lights, and steam rises from a large metal pot on the right.",
    "An alpine lake at sunrise with perfectly still water mirroring three snow-capped peaks. On the rocky shore in the "
    "lower right stands a small red wooden cabin with a grey stone chimney and a thin line of smoke. A yellow canoe is "
    "pulled up on the pebbles next to it, two paddles crossed inside. Pine trees frame the left edge, and a thin layer "
    "of pink mist floats above the far end of the lake.",
    "A close-up studio photograph of a breakfast table from above: a white ceramic plate holds two fried eggs, four "
    "strips of crispy bacon and a slice of toast with melting butter. To the left is a glass of orange juice, to the "
    "right a silver fork and knife on a folded blue-and-white checked napkin. A small bowl of strawberries and "
    "blueberries sits at the top edge, and crumbs are scattered on the light oak surface.",
    "A futuristic city rooftop garden at dusk. Rows of raised wooden beds hold tomatoes, lettuce and sunflowers, "
    "watered by a small white robot with round blue eyes. Behind them, glass skyscrapers glow orange and purple "
    "against the darkening sky, and a silver airship drifts between two towers. An elderly man in a straw hat and "
    "denim overalls sits on a green bench in the middle, holding a watering can and smiling at the robot.",
    "A watercolour illustration of a children's classroom: twelve small wooden desks in three rows face a large "
    "chalkboard covered with colourful drawings of planets. A tall bookshelf full of picture books stands against "
    "the yellow wall on the left, next to a globe on a brass stand. Sunlight streams through two big windows on the "
    "right, a paper airplane lies on the floor, and a brown teddy bear sits on the teacher's desk.",
]

TOPICS = [
    "an indoor scene in a home", "a city street", "a natural landscape", "animals in their habitat",
    "a group of people doing an activity", "food on a table", "a vehicle or means of transport",
    "a fantasy or science-fiction scene",
    "an object still life", "a sports event", "a shop, market or restaurant", "a workplace or laboratory",
    "a portrait of a person with detailed clothing", "an underwater scene", "a historical setting", "a festival or "
    "celebration", "a scene with written text on signs or objects", "a garden or park", "a children's book "
    "illustration", "weather: rain, snow, fog or storm", "an aerial view", "a close-up of small objects",
    "architecture and buildings", "a night scene with artificial lights",
]

# category tags: a prompt gets a tag when it contains one of its words (whole words, case-insensitive)
TAG_LEXICON: dict[str, set[str]] = {
    "people": {"man", "woman", "men", "women", "boy", "girl", "child", "children", "person", "people", "kid", "kids",
               "baby", "he", "she", "chef", "farmer", "teacher", "crowd", "family", "friends", "elderly", "player"},
    "animals": {"cat", "cats", "dog", "dogs", "bird", "birds", "horse", "fish", "cow", "sheep", "rabbit", "bear",
                "fox", "deer", "lion", "tiger", "elephant", "owl", "duck", "puppy", "kitten", "butterfly", "whale",
                "dolphin", "squirrel", "parrot", "giraffe", "animal", "animals"},
    "food": {"food", "bread", "cake", "fruit", "apple", "eggs", "bacon", "toast", "soup", "pizza", "coffee", "tea",
             "dumplings", "noodles", "strawberries", "vegetables", "cheese", "plate", "bowl", "juice", "wine"},
    "vehicles": {"car", "cars", "bus", "train", "bicycle", "bike", "boat", "ship", "airplane", "plane", "truck",
                 "canoe", "motorcycle", "airship", "tram", "taxi", "scooter"},
    "indoor": {"room", "kitchen", "bedroom", "classroom", "office", "library", "living", "table", "desk", "shelf",
               "sofa", "armchair", "window", "lamp", "indoors", "interior", "studio"},
    "outdoor": {"street", "park", "garden", "forest", "mountain", "mountains", "lake", "river", "beach", "sea",
                "ocean", "sky", "field", "city", "village", "desert", "road", "rooftop", "outdoors"},
    "text": {"sign", "reading", "reads", "written", "letters", "words", "text", "label", "poster", "banner",
             "headline", "inscription"},
    "counting": {"two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "pair",
                 "dozen", "several"},
    "spatial": {"left", "right", "above", "below", "behind", "beside", "between", "foreground", "background",
                "corner", "top", "bottom", "next", "under", "middle", "centre", "center"},
    "style": {"painting", "watercolour", "watercolor", "illustration", "photograph", "photo", "sketch", "cartoon",
              "render", "oil", "anime", "pixel", "drawing", "cinematic"},
}

_WORD = re.compile(r"[A-Za-z0-9]+(?:['-][A-Za-z0-9]+)*")


def word_count(text: str) -> int:
    return len(_WORD.findall(text))


def normalize_text(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed: the key of the exact-duplicate check."""
    return " ".join(w.lower() for w in _WORD.findall(text))


def shingles(text: str, n: int = 3) -> set[str]:
    """The set of word ``n``-grams of the normalised text (the whole text if it has fewer than ``n`` words)."""
    words = normalize_text(text).split()
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


class NearDuplicateIndex:
    """Exact Jaccard similarity of word-shingle sets against everything added, via an inverted index (only texts
    that share a shingle are compared)."""

    def __init__(self, threshold: float = 0.7, n: int = 3) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"near_duplicate_threshold must be in (0, 1], got {threshold}.")
        self.threshold, self.n = threshold, n
        self.sizes: list[int] = []
        self.postings: dict[str, list[int]] = {}

    def max_similarity(self, text: str) -> float:
        s = shingles(text, self.n)
        if not s:
            return 0.0
        shared = Counter(doc for g in s for doc in self.postings.get(g, ()))
        return max((c / (len(s) + self.sizes[d] - c) for d, c in shared.items()), default=0.0)

    def is_duplicate(self, text: str) -> bool:
        return self.max_similarity(text) >= self.threshold

    def add(self, text: str) -> None:
        s = shingles(text, self.n)
        doc = len(self.sizes)
        self.sizes.append(len(s))
        for g in s:
            self.postings.setdefault(g, []).append(doc)


def tag_prompt(text: str, lexicon: dict[str, set[str]] | None = None) -> list[str]:
    """The categories of :data:`TAG_LEXICON` (or ``lexicon``) whose words occur in ``text``, sorted."""
    words = set(normalize_text(text).split())
    return sorted(tag for tag, vocab in (lexicon or TAG_LEXICON).items() if words & vocab)


_PREFIX = re.compile(r"^\s*(?:(?:here(?:'s| is)[^:\n]*:)|(?:(?:new |image )?(?:description|prompt|caption)\s*"
                     r"(?:\d+)?\s*:))\s*", re.I)


def clean_generation(text: str) -> str:
    """The description in an LLM answer: the first non-empty paragraph, without a leading "Description:" / "Here is
    ...:" label, list markers or surrounding quotes, whitespace collapsed."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    if not paragraphs:
        return ""
    first = paragraphs[0]
    if _PREFIX.match(first) and not _PREFIX.sub("", first).strip() and len(paragraphs) > 1:
        first = paragraphs[1]  # a label on its own paragraph
    first = _PREFIX.sub("", first)
    first = re.sub(r"^\s*(?:[-*]|\d+[.)])\s+", "", first)
    first = " ".join(first.split())
    if len(first) >= 2 and first[0] in "\"'“" and first[-1] in "\"'”":
        first = first[1:-1].strip()
    return first


@dataclass
class DensePromptsConfig:
    """How to write DensePrompts; see the module docs. ``examples``/``topics`` default to the built-in pools."""

    model: str
    num_prompts: int = 7000
    min_words: int = 40
    max_words: int = 140
    num_shots: int = 3
    examples: list[str] = field(default_factory=lambda: list(DEFAULT_EXAMPLES))
    topics: list[str] = field(default_factory=lambda: list(TOPICS))
    instruction: str = (
        "You write prompts for a text-to-image model. Each prompt is one paragraph of {min_words} to {max_words} "
        "words that describes a single image in concrete detail: the main objects with their colours, shapes, "
        "materials and counts, where they are relative to each other, the setting, the lighting and the style. "
        "Write only the description."
    )
    temperature: float = 0.9
    top_p: float = 0.95
    max_new_tokens: int = 256
    batch_size: int = 8
    near_duplicate_threshold: float = 0.7
    shingle_size: int = 3
    seed: int = 0
    max_attempts: int | None = None  # generation calls before giving up; default 4 x num_prompts / batch_size + 10
    device: str = "cpu"
    dtype: str = "auto"
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1, got {self.num_prompts}.")
        if not 0 < self.min_words <= self.max_words:
            raise ValueError(f"Need 0 < min_words <= max_words, got {self.min_words} and {self.max_words}.")
        if not self.examples:
            raise ValueError("DensePrompts needs at least one few-shot example.")
        if not self.topics:
            raise ValueError("DensePrompts needs at least one topic.")
        if self.num_shots < 0 or self.batch_size < 1:
            raise ValueError("num_shots must be >= 0 and batch_size >= 1.")


def build_messages(cfg: DensePromptsConfig, rng: random.Random) -> tuple[list[dict[str, str]], str]:
    """One request: the instruction, ``num_shots`` example exchanges, and the new topic. Returns (messages, topic)."""
    topic = rng.choice(cfg.topics)
    shots = rng.sample(cfg.examples, min(cfg.num_shots, len(cfg.examples)))
    system = cfg.instruction.format(min_words=cfg.min_words, max_words=cfg.max_words)
    messages = [{"role": "system", "content": system}]
    for ex in shots:
        messages.append({"role": "user", "content": "Write one image description."})
        messages.append({"role": "assistant", "content": ex})
    messages.append({"role": "user", "content": f"Write one image description. Topic: {topic}."})
    return messages, topic


def render_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    """The chat template when the tokenizer has one (system turn folded into the first user turn if the template
    rejects it), otherwise a plain "Instruction / Example / Description:" text prompt."""
    if getattr(tokenizer, "chat_template", None):
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - some templates refuse a system role
            merged = [{"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}]
            return tokenizer.apply_chat_template(merged + messages[2:], tokenize=False, add_generation_prompt=True)
    lines = [messages[0]["content"], ""]
    for m in messages[1:]:
        if m["role"] == "assistant":
            lines += [f"Description: {m['content']}", ""]
        else:
            lines.append(m["content"])
    lines.append("Description:")
    return "\n".join(lines)


def _read_existing(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [rec for _, rec in read_jsonl(path, required=("prompt",))]


class _HFGenerator:
    """Samples continuations of text prompts with a transformers causal LM."""

    def __init__(self, cfg: DensePromptsConfig) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs = {"trust_remote_code": True} if cfg.trust_remote_code else {}
        dtype = "auto" if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(cfg.model, **kwargs)
            self.model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=dtype, **kwargs).to(cfg.device).eval()
        except (OSError, ValueError) as err:
            raise describe_load_error(err, "instruction LLM", cfg.model) from err
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.cfg = cfg

    def __call__(self, prompts: list[str], seed: int) -> list[str]:
        import torch

        torch.manual_seed(seed)
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=not has_template)
        enc = {k: enc[k].to(self.cfg.device) for k in ("input_ids", "attention_mask")}  # no token_type_ids
        with torch.no_grad():
            out = self.model.generate(**enc, do_sample=True, temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                                      max_new_tokens=self.cfg.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def build_dense_prompts(
    cfg: DensePromptsConfig,
    out_path: str | Path,
    generate: Callable[[list[str], int], list[str]] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Append prompts to ``out_path`` (JSONL) until it holds ``cfg.num_prompts``; returns the statistics (also written
    to ``{out_path}.stats.json``). ``generate(prompts, seed) -> texts`` defaults to ``cfg.model`` through
    transformers."""
    from tqdm.auto import tqdm

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    existing = _read_existing(out_path)
    seen = {normalize_text(r["prompt"]) for r in existing}
    index = NearDuplicateIndex(cfg.near_duplicate_threshold, cfg.shingle_size)
    for r in existing:
        index.add(r["prompt"])
    stats_path = out_path.with_name(out_path.name + ".stats.json")
    stats: Counter[str] = Counter()
    if stats_path.is_file() and existing:
        stats.update(json.loads(stats_path.read_text()).get("counts", {}))
    stats["kept"] = len(existing)
    tokenizer_holder: dict[str, Any] = {}
    if generate is None:
        gen = _HFGenerator(cfg)
        tokenizer_holder["tok"] = gen.tokenizer
        generate = gen
    render: Callable[[list[dict[str, str]]], str] = (
        (lambda m: render_prompt(tokenizer_holder["tok"], m)) if "tok" in tokenizer_holder
        else (lambda m: render_prompt(None, m))
    )
    max_attempts = cfg.max_attempts or (4 * cfg.num_prompts // cfg.batch_size + 10)
    attempt = 0
    next_id = len(existing)
    bar = tqdm(total=cfg.num_prompts, initial=len(existing), desc="DensePrompts", disable=not progress)
    with open(out_path, "a", encoding="utf-8") as f:
        while next_id < cfg.num_prompts and attempt < max_attempts:
            # the stream depends on (seed, how many prompts exist, attempt): a resumed run does not repeat itself
            call_seed = int.from_bytes(hashlib.sha256(f"{cfg.seed}|{next_id}|{attempt}".encode()).digest()[:4],
                                       "little")
            rng = random.Random(call_seed)
            requests = [build_messages(cfg, rng) for _ in range(cfg.batch_size)]
            texts = generate([render(m) for m, _ in requests], call_seed)
            attempt += 1
            for (_, topic), raw in zip(requests, texts):
                stats["generated"] += 1
                text = clean_generation(raw)
                n = word_count(text)
                if not text:
                    stats["dropped_empty"] += 1
                elif not cfg.min_words <= n <= cfg.max_words:
                    stats["dropped_length"] += 1
                elif normalize_text(text) in seen:
                    stats["dropped_exact_duplicate"] += 1
                elif index.is_duplicate(text):
                    stats["dropped_near_duplicate"] += 1
                elif next_id < cfg.num_prompts:
                    seen.add(normalize_text(text))
                    index.add(text)
                    rec = {"id": f"dense-{next_id:06d}", "prompt": text, "num_words": n, "tags": tag_prompt(text),
                           "topic": topic, "model": cfg.model, "seed": call_seed}
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    f.flush()
                    next_id += 1
                    stats["kept"] += 1
                    bar.update(1)
    bar.close()
    result = {"counts": dict(stats), "num_prompts": next_id, "target": cfg.num_prompts, "complete":
              next_id >= cfg.num_prompts, "output": str(out_path), "config": {k: v for k, v in asdict(cfg).items()
                                                                               if k not in ("examples",)}}
    stats_path.write_text(json.dumps(result, indent=1))
    return result


def tag_counts(records: Iterable[dict[str, Any]]) -> dict[str, int]:
    """How many prompts carry each tag."""
    c: Counter[str] = Counter()
    for r in records:
        c.update(r.get("tags", []))
    return dict(sorted(c.items()))


def read_examples(path: str | Path) -> list[str]:
    """Few-shot examples from a text file (paragraphs separated by blank lines) or JSONL (``prompt`` field)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return [r["prompt"] for r in _read_existing(path)]
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", read_text(path)) if p.strip()]

