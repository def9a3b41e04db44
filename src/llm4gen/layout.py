"""Boxes from a prompt's own words: a rule-based layout planner for region guidance.

:func:`plan_regions` reads where a prompt puts things ("a red cube on the left and a blue ball on the right", "In the
upper right corner, there is a small cyan ring", "a dog to the left of a cat") and returns the
:class:`~llm4gen.regions.Region` list that ``LLM4GenPipeline(..., regions=...)`` steers with, so region guidance
needs no boxes written by hand (``regions="auto"`` does this inside the pipeline).

The rules, all on the text (no model):

- **Places** are phrases naming a cell of a 3x3 grid ("in the upper left corner", "top-right", "on the left side,
  halfway down", "near the bottom edge, horizontally centred", "in the centre of the image") or a column or row of
  it ("on the left", "at the top"); a column is the full height, a row the full width. ``edges`` are the grid's
  inner lines (fractions of the image; thirds by default).
- **Things** are entity mentions: a noun with its attribute words from the entity parser's lexicon (colours, sizes,
  materials: :func:`llm4gen.prompt_words.parse_entities`), else the words a determiner starts ("a cat", "the old
  lighthouse"), up to the next preposition, verb of placing, "-ing" word, conjunction or punctuation; a colour after
  ("a big cross, coloured green") is the mention's too.
- Inside a sentence each place belongs to the last thing named after the previous place and before it; if there is
  none, to the first thing named after it ("a red circle and a blue square in the top left" places the square).
- A thing named again without a place ("... The red star is to the left of the triangle.") is the same thing when
  its noun is (after ``synonyms``) and its colour words do not differ; its words join that region.
- **Relations** between two things that have no place ("a dog to the left of a cat", "a lamp above a sofa"; the
  first thing at most three words before the relation, the second at most two after) give each the half of the
  image the relation says: left / right halves for left of, right of, and (the first named on the left) next to,
  beside, alongside; top / bottom halves for above, on (the) top of, below, under, beneath, on the bottom of
  (T2I-CompBench's spatial prompts say "a girl on the top of a bowl", "a dog next to a chair").
- Things that get no place get no region. The planner reads English; anything it misses can be given as
  :class:`~llm4gen.regions.Region` objects by hand.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .prompt_words import ATTRIBUTE_WORDS, CLAUSE_BREAK, COLOUR_WORDS, STOP_WORDS, colours_named, entity_mentions
from .regions import Region
from .utils import singular

__all__ = ["PLACE_EXAMPLES", "plan_regions", "region_words"]

# what a prompt says for the planner to find a place; messages that it found none quote these
PLACE_EXAMPLES = "'on the left', 'in the upper right corner', 'a dog to the left of a cat'"

_H = {"left": "left", "right": "right"}
_V = {"top": "top", "upper": "top", "bottom": "bottom", "lower": "bottom"}
_NOT_REL = r"(?!\s+(?:of|side\s+of|hand\s+side\s+of|edge\s+of)\b)"  # "on the left of X" is a relation, not a place
_IMAGE = r"(?:\s+(?:of|in)\s+the\s+(?:image|picture|frame|canvas|scene|photo|photograph|painting|composition))?"
# (pattern, horizontal, vertical); a number names the regex group holding the word, None = not said
_PLACES: list[tuple[str, int | str | None, int | str | None]] = [
    (rf"\bright\s+in\s+the\s+(?:centre|center|middle){_IMAGE}", "centre", "middle"),
    (rf"\b(?:in|at)\s+the\s+(?:very\s+)?(?:centre|center|middle){_IMAGE}(?!\s+(?:of|left|right|top|bottom)\b)",
     "centre", "middle"),
    (rf"\b(?:in\s+the\s+|at\s+the\s+)?(upper|top|lower|bottom)[\s-](left|right)(?:(?:\s+|-)hand)?"
     rf"(?:\s+(?:corner|side|part|area|quarter|region))?{_IMAGE}{_NOT_REL}", 2, 1),
    (rf"\b(?:in\s+the\s+|at\s+the\s+)?(left|right)[\s-](upper|top|lower|bottom)"
     rf"(?:\s+(?:corner|part|area|quarter|region))?{_IMAGE}", 1, 2),
    (rf"\b(?:on|at|to|along|near|by|towards?)\s+the\s+(?:far\s+|very\s+)?(left|right)(?:(?:\s+|-)hand)?"
     rf"(?:\s+(?:side|edge|half|part|third|border))?{_IMAGE}{_NOT_REL}", 1, None),
    (rf"\b(?:at|near|along|on|in|by|towards?)\s+the\s+(?:very\s+)?(top|bottom|upper|lower)"
     rf"(?:\s+(?:edge|side|half|part|third|border))?{_IMAGE}(?!\s+(?:of|left|right)\b)", None, 1),
    (r"\b(?:horizontally|left-right)\s+(?:centred|centered)\b", "centre", None),
    (r"\b(?:halfway|half-way)\s+(?:down|up)\b|\bvertically\s+(?:centred|centered)\b", None, "middle"),
]
_PLACE_RES = [(re.compile(p, re.IGNORECASE), h, v) for p, h, v in _PLACES]
_JOIN = re.compile(r"^[\s,]*(?:and\s+)?$", re.IGNORECASE)  # what may stand between two halves of one place
_RELATIONS = [
    (re.compile(r"\b(?:to|on|at)\s+the\s+(left|right)(?:(?:\s+|-)hand)?(?:\s+side)?\s+of\b|\b(left|right)\s+of\b|"
                r"\b(next\s+to|beside|alongside)\b", re.IGNORECASE), "x"),
    (re.compile(r"\b(above|over|on\s+(?:the\s+)?top\s+of|atop|below|under|underneath|beneath|"
                r"(?:on|at)\s+the\s+bottom\s+of)\b", re.IGNORECASE), "y"),
]
# the first thing of such a relation takes the first half (side by side: the first named on the left)
_FIRST = {"left", "above", "over", "top", "atop", "next", "beside", "alongside"}
_DETERMINERS = {"a", "an", "the", "one", "two", "three", "four", "five", "some", "several", "another", "this", "that",
                "these", "those", "his", "her", "their", "its", "my", "our"}
_BOUNDARY = {
    "on", "in", "at", "to", "near", "next", "beside", "besides", "under", "underneath", "beneath", "above", "below",
    "over", "behind", "between", "by", "of", "with", "without", "from", "into", "onto", "against", "along", "around",
    "and", "or", "but", "while", "which", "that", "who", "where", "is", "are", "was", "were", "be", "sits", "sit",
    "sitting", "stands", "stand", "standing", "lies", "lie", "lying", "placed", "located", "positioned", "appears",
    "rests", "resting", "floats", "floating", "holding", "holds", "wearing", "looking", "facing", "there", "it",
}
# words that name a part of the picture, not a thing in it ("below the centre", "the rest of the image")
_PLACE_NOUNS = {"centre", "center", "middle", "left", "right", "top", "bottom", "side", "edge", "corner", "half",
                "image", "picture", "background", "foreground", "scene", "frame", "canvas", "photo", "rest", "distance"}
_WORD_RE = re.compile(r"[A-Za-z][A-Za-z'-]*")
# a colour named after its thing: "a cross, coloured green", "a plus sign, coloured red", "a cube in red"
_COLOURED = re.compile(r"((?:\s+[A-Za-z-]+){0,2}?)(?:\s*,?\s*(?:coloured|colored|painted)|\s+in)\s+([A-Za-z]+)\b",
                       re.IGNORECASE)
_SENTENCE = re.compile(r"[^.!?]+[.!?]*")


@dataclass
class _Thing:
    noun: str
    colours: frozenset[str]
    spans: list[tuple[int, int]] = field(default_factory=list)
    cell: tuple[str | None, str | None] | None = None
    half: tuple[float, float, float, float] | None = None


def _places(sentence: str, offset: int) -> list[tuple[int, int, str | None, str | None]]:
    """(start, end, horizontal, vertical) of each place phrase in ``sentence``, halves of one place joined."""
    found: list[tuple[int, int, str | None, str | None]] = []
    for rx, h, v in _PLACE_RES:
        for m in rx.finditer(sentence):
            if any(m.start() < e and m.end() > s for s, e, _, _ in found):
                continue
            hh = _H[m.group(h).lower()] if isinstance(h, int) else h
            vv = _V[m.group(v).lower()] if isinstance(v, int) else v
            found.append((m.start(), m.end(), hh, vv))
    found.sort()
    joined: list[tuple[int, int, str | None, str | None]] = []
    for s, e, h, v in found:
        if joined:
            ps, pe, ph, pv = joined[-1]
            fits = (ph is None or h is None) and (pv is None or v is None)
            if fits and _JOIN.match(sentence[pe:s]):
                joined[-1] = (ps, e, ph or h, pv or v)
                continue
        joined.append((s, e, h, v))
    return [(s + offset, e + offset, h, v) for s, e, h, v in joined]


def _mentions(text: str, blocked: Sequence[tuple[int, int]]) -> list[tuple[str, frozenset[str], list[tuple[int, int]]]]:
    """(noun, colour words, spans) of each thing ``text`` names, in order, none inside a ``blocked`` span."""
    def free(span: tuple[int, int]) -> bool:
        return not any(span[0] < e and span[1] > s for s, e in blocked)

    out = []
    for ent, attrs in entity_mentions(text, "rule"):
        if free(ent):
            out.append((ent, colours_named(text, attrs), [ent, *attrs]))
    taken = [s for _, _, spans in out for s in spans]
    words = list(_WORD_RE.finditer(text))
    for i, w in enumerate(words):
        if w.group().lower() not in _DETERMINERS:
            continue
        chunk = []
        for nxt in words[i + 1:i + 6]:
            low = nxt.group().lower()
            between = text[(chunk[-1].end() if chunk else w.end()):nxt.start()]
            if low in _BOUNDARY or low in _DETERMINERS or CLAUSE_BREAK.search(between) or (
                    chunk and low.endswith("ing") and len(low) > 5):  # "a cat sleeping ...", not "a sleeping cat"
                break
            chunk.append(nxt)
        spans = [(m.start(), m.end()) for m in chunk]
        if not spans or not all(free(s) for s in spans) or any(s[0] < e and s[1] > b for s in spans
                                                                 for b, e in taken):
            continue
        spans = [s for s in spans if text[s[0]:s[1]].lower() not in STOP_WORDS]
        head = spans[-1] if spans else None
        if head is None or text[head[0]:head[1]].lower() in ATTRIBUTE_WORDS | _PLACE_NOUNS:
            continue
        out.append((head, colours_named(text, spans), spans))
        taken.extend(spans)
    out.sort(key=lambda m: min(m[2]))
    for k, (ent, colours, spans) in enumerate(out):  # "a big cross, coloured green, ..." names its colour after it
        m = _COLOURED.match(text, max(spans[-1][1], ent[1]))
        if m and m.group(2).lower() in COLOUR_WORDS and free(m.span(2)) and not (
                set(m.group(1).lower().split()) & (_BOUNDARY | _DETERMINERS)):
            out[k] = (ent, colours | colours_named(text, [m.span(2)]), [*spans, m.span(2)])
    return [(text[ent[0]:ent[1]].lower(), frozenset(colours), sorted(spans)) for ent, colours, spans in out]


def _near(between: str, words: int) -> bool:
    """Whether the text between a relation and a thing is at most ``words`` words, with no punctuation."""
    return not CLAUSE_BREAK.search(between) and len(between.split()) <= words


def _noun(word: str, synonyms: Mapping[str, str]) -> str:
    """The name a mention's noun is matched by: its synonym's, in the singular."""
    word = singular(synonyms.get(word, word))
    return synonyms.get(word, word)


def plan_regions(prompt: str, edges: Sequence[float] = (1 / 3, 2 / 3),
                 synonyms: Mapping[str, str] | None = None) -> list[Region]:
    """The regions ``prompt``'s own words give (see the module's rules): per thing it places, a
    :class:`~llm4gen.regions.Region` with the character spans of every mention's words and the box of its place.
    ``edges`` are the 3x3 grid's inner lines (``(lo, hi)``, fractions of the image); ``synonyms`` maps nouns to one
    name per kind of thing (``{"disc": "circle"}``) so that mentions by another word join the same region. Returns
    ``[]`` when the prompt places nothing."""
    if not isinstance(prompt, str):
        raise TypeError(f"plan_regions takes one prompt string, got {type(prompt).__name__}.")
    lo, hi = (float(e) for e in edges)
    if not 0.0 < lo < hi < 1.0:
        raise ValueError(f"edges must be two fractions 0 < lo < hi < 1 (the grid's inner lines), got {tuple(edges)}.")
    synonyms = {k.lower(): v.lower() for k, v in (synonyms or {}).items()}
    sentences = [(sm.start(), sm.end(), _places(sm.group(), sm.start()),
                  [(m.start() + sm.start(), m.end() + sm.start(), kind, m.group(m.lastindex or 1))
                   for rx, kind in _RELATIONS for m in rx.finditer(sm.group())])
                 for sm in _SENTENCE.finditer(prompt)]
    sentences = [(a, b, places, [r for r in rels if not any(r[0] < e and r[1] > s for s, e, _, _ in places)])
                 for a, b, places, rels in sentences]
    blocked = [(s, e) for _, _, places, rels in sentences for s, e, *_ in [*places, *rels]]
    everything = _mentions(prompt, blocked)
    things: list[_Thing] = []
    relations: list[tuple[int, str, int]] = []
    for start, end, places, rels in sentences:
        mentions = [m for m in everything if start <= m[2][0][0] < end]
        cells: list[tuple[str | None, str | None] | None] = [None] * len(mentions)
        previous_end = start
        for s, e, h, v in places:
            before = [i for i, m in enumerate(mentions) if previous_end <= m[2][-1][0] < s and cells[i] is None]
            after = [i for i, m in enumerate(mentions) if m[2][0][0] >= e and cells[i] is None]
            owner = before[-1] if before else after[0] if after else None
            if owner is not None:
                cells[owner] = (h, v)
            previous_end = e
        index = [_resolve(things, _noun(noun, synonyms), colours, spans, cell)
                 for (noun, colours, spans), cell in zip(mentions, cells)]
        for s, e, kind, word in rels:  # "A [is / appears / sits just] REL [the] B"
            before = [k for k, m in zip(index, mentions) if m[2][-1][1] <= s and _near(prompt[m[2][-1][1]:s], 3)]
            after = [k for k, m in zip(index, mentions) if m[2][0][0] >= e and _near(prompt[e:m[2][0][0]], 2)]
            if before and after and before[-1] != after[0]:
                first = bool(set(word.lower().split()) & _FIRST)
                relations.append((before[-1], kind if first else kind + "-", after[0]))
    for a, kind, b in relations:
        ta, tb = things[a], things[b]
        if ta.cell or tb.cell or ta.half or tb.half:
            continue
        first, second = ((0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)) if kind[0] == "x" else \
            ((0.0, 0.0, 1.0, 0.5), (0.0, 0.5, 1.0, 1.0))
        ta.half, tb.half = (first, second) if not kind.endswith("-") else (second, first)
    spans_x = {"left": (0.0, lo), "centre": (lo, hi), "right": (hi, 1.0), None: (0.0, 1.0)}
    spans_y = {"top": (0.0, lo), "middle": (lo, hi), "bottom": (hi, 1.0), None: (0.0, 1.0)}
    out = []
    for t in things:
        if t.cell is not None:
            (x0, x1), (y0, y1) = spans_x[t.cell[0]], spans_y[t.cell[1]]
            out.append(Region(None, (x0, y0, x1, y1), spans=tuple(sorted(set(t.spans)))))
        elif t.half is not None:
            out.append(Region(None, t.half, spans=tuple(sorted(set(t.spans)))))
    return out


def _resolve(things: list[_Thing], noun: str, colours: frozenset[str], spans: list[tuple[int, int]],
             cell: tuple[str | None, str | None] | None) -> int:
    """The index in ``things`` of the thing a mention names: an earlier one it repeats, else a new one."""
    same = [k for k, t in enumerate(things) if t.noun == noun and (not colours or not t.colours
                                                                      or colours == t.colours)]
    if cell is not None:
        same = [k for k in same if things[k].cell in (None, cell)]
    exact = [k for k in same if things[k].colours == colours]
    pick = exact if len(exact) == 1 else same
    if len(pick) == 1:
        t = things[pick[0]]
        t.spans.extend(spans)
        t.colours = t.colours or colours
        t.cell = t.cell or cell
        return pick[0]
    things.append(_Thing(noun, colours, list(spans), cell))
    return len(things) - 1


def region_words(prompt: str, region: Region) -> str:
    """The words of ``prompt`` a region names, for showing: its phrase, or its spans' text joined ("red circle /
    red circle")."""
    if region.text:
        return region.text
    groups: list[list[tuple[int, int]]] = []
    for s, e in sorted(region.spans):
        if groups and re.fullmatch(r"[\s-]*", prompt[groups[-1][-1][1]:s]):
            groups[-1].append((s, e))
        else:
            groups.append([(s, e)])
    return " / ".join(prompt[g[0][0]:g[-1][1]] for g in groups)
