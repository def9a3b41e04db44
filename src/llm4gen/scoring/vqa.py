"""Visual question answering scorers: ``score(images, questions) -> P(yes)`` per (image, question) pair.

Two implementations of one protocol (:class:`VQAScorer`), both plain transformers models loaded by hub id or path:

- :class:`BlipVQAScorer` - a BLIP VQA model (``BlipForQuestionAnswering``, e.g. ``Salesforce/blip-vqa-base``), the
  model T2I-CompBench's BLIP-VQA evaluator uses. Score = ``p(yes) / (p(yes) + p(no))`` of the answer decoder's first
  token, exactly the ``vqa_prob`` inference of T2I-CompBench's ``BLIPvqa_eval`` (which renormalises over the two
  words). Like the original BLIP code (and unlike transformers' ``generate``), the question's first token is replaced
  by ``[ENC]`` when the tokenizer has that token (``question_start="auto"``); ``"cls"`` keeps transformers' behaviour.
- :class:`GenerativeVQAScorer` - any image-text-to-text model with ``generate()`` (LLaVA, Qwen2-VL, BLIP-2,
  InstructBLIP, ...). ``mode="prob"``: the same two-word renormalisation on the first generated token's logits;
  ``mode="exact"``: generate a short answer and score 1.0 if it starts with "yes", else 0.0 (DPG-Bench's rule).

:func:`load_vqa_scorer` picks the right one from the model's config.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from PIL import Image

from ..utils import describe_load_error

__all__ = ["BlipVQAScorer", "GenerativeVQAScorer", "VQAScorer", "load_image_text_model", "load_vqa_scorer",
           "yes_probability"]


@runtime_checkable
class VQAScorer(Protocol):
    """Anything that answers yes/no questions about images with a number in [0, 1] (1 = certainly yes)."""

    name: str

    def score(self, images: Sequence[Image.Image], questions: Sequence[str]) -> list[float]: ...


def yes_probability(logits: torch.Tensor, yes_ids: Sequence[int], no_ids: Sequence[int]) -> torch.Tensor:
    """``p(yes) / (p(yes) + p(no))`` from next-token ``logits`` [B, V]; several ids per word are summed
    ("yes", "Yes", " yes"). Computed in log space, so it stays exact when both probabilities underflow."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    lyes = torch.logsumexp(logp[:, list(yes_ids)], dim=-1)
    lno = torch.logsumexp(logp[:, list(no_ids)], dim=-1)
    return torch.sigmoid(lyes - lno)


def _word_ids(tokenizer, words: Sequence[str]) -> list[int]:
    """Single-token ids of ``words`` (with and without a leading space); raises if none is one token."""
    ids: set[int] = set()
    unk = getattr(tokenizer, "unk_token_id", None)
    for w in words:
        for variant in (w, " " + w):
            toks = tokenizer.encode(variant, add_special_tokens=False)
            if len(toks) == 1 and toks[0] != unk:
                ids.add(toks[0])
    if not ids:
        raise ValueError(f"The tokenizer has no single token for any of {list(words)}; this model cannot be scored "
                         "by yes/no probability. Use mode='exact'.")
    return sorted(ids)


def _check_pairs(images: Sequence[Image.Image], questions: Sequence[str]) -> None:
    if len(images) != len(questions):
        raise ValueError(f"Got {len(images)} images but {len(questions)} questions; pass one question per image.")


class BlipVQAScorer:
    """P(yes) from a transformers BLIP VQA model (see the module docs for the exact rule)."""

    def __init__(self, model, processor, name: str = "blip-vqa", device: str | torch.device = "cpu",
                 batch_size: int = 16, question_start: str = "auto", max_question_tokens: int = 35,
                 mode: str = "prob") -> None:
        if mode not in ("prob", "exact"):
            raise ValueError(f"mode must be 'prob' or 'exact', got {mode!r}.")
        self.mode = mode
        if question_start not in ("auto", "enc", "cls"):
            raise ValueError(f"question_start must be 'auto', 'enc' or 'cls', got {question_start!r}.")
        self.model, self.processor, self.name = model.eval(), processor, name
        self.device, self.batch_size, self.max_question_tokens = torch.device(device), batch_size, max_question_tokens
        tok = processor.tokenizer
        enc_id = tok.convert_tokens_to_ids("[ENC]")
        has_enc = enc_id is not None and enc_id != tok.unk_token_id
        if question_start == "enc" and not has_enc:
            raise ValueError("question_start='enc' needs a tokenizer with an [ENC] token; this one has none.")
        self.enc_token_id = enc_id if (question_start == "enc" or (question_start == "auto" and has_enc)) else None
        self.yes_ids, self.no_ids = _word_ids(tok, ["yes"]), _word_ids(tok, ["no"])

    @classmethod
    def from_pretrained(cls, ref: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                        **kwargs) -> BlipVQAScorer:
        from transformers import AutoProcessor, BlipForQuestionAnswering

        try:
            processor = AutoProcessor.from_pretrained(ref)
            model = BlipForQuestionAnswering.from_pretrained(ref, dtype=dtype).to(device)
        except (OSError, ValueError) as err:
            raise describe_load_error(err, "BLIP VQA model", ref) from err
        return cls(model, processor, name=ref, device=device, **kwargs)

    @torch.no_grad()
    def score(self, images: Sequence[Image.Image], questions: Sequence[str]) -> list[float]:
        """P(yes) per pair. Questions are batched by token length, without padding: transformers' BLIP answer decoder
        ignores the question's attention mask, so padded questions would change the answers."""
        _check_pairs(images, questions)
        tok = self.processor.tokenizer
        lengths = [len(ids) for ids in tok(list(questions), truncation=True, max_length=self.max_question_tokens)
                   ["input_ids"]]
        groups: dict[int, list[int]] = {}
        for i, n in enumerate(lengths):
            groups.setdefault(n, []).append(i)
        out = [0.0] * len(images)
        for members in groups.values():
            for start in range(0, len(members), self.batch_size):
                idx = members[start : start + self.batch_size]
                for i, v in zip(idx, self._score_batch([images[i] for i in idx], [questions[i] for i in idx])):
                    out[i] = v
        return out

    def _score_batch(self, images: list[Image.Image], questions: list[str]) -> list[float]:
        ims = [im.convert("RGB") for im in images]
        inputs = self.processor(images=ims, text=questions, return_tensors="pt", truncation=True,
                                max_length=self.max_question_tokens)
        input_ids = inputs["input_ids"].to(self.device)
        if self.enc_token_id is not None:
            input_ids = input_ids.clone()
            input_ids[:, 0] = self.enc_token_id
        attention = inputs["attention_mask"].to(self.device)
        pixels = inputs["pixel_values"].to(self.device, self.model.dtype)
        m = self.model
        if self.mode == "exact":
            seqs = m.generate(input_ids=input_ids, pixel_values=pixels, attention_mask=attention, max_new_tokens=5)
            answers = self.processor.tokenizer.batch_decode(seqs, skip_special_tokens=True)
            return [1.0 if a.strip().lower().startswith("yes") else 0.0 for a in answers]
        image_embeds = m.vision_model(pixel_values=pixels)[0]
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
        question = m.text_encoder(input_ids=input_ids, attention_mask=attention, encoder_hidden_states=image_embeds,
                                  encoder_attention_mask=image_mask, return_dict=False)[0]
        bos = torch.full((len(ims), 1), m.decoder_start_token_id, dtype=torch.long, device=self.device)
        logits = m.text_decoder(input_ids=bos, encoder_hidden_states=question, encoder_attention_mask=attention,
                                return_dict=True).logits[:, 0]
        return yes_probability(logits, self.yes_ids, self.no_ids).tolist()


class GenerativeVQAScorer:
    """P(yes) (``mode="prob"``) or exact-match yes (``mode="exact"``) from any image-text-to-text model.

    The question is wrapped in ``template`` (default: ``"{question} Answer yes or no."``) and, when the processor has
    a chat template, in one user turn with the image; otherwise it is passed as plain text with the image.
    """

    def __init__(self, model, processor, name: str = "vqa", device: str | torch.device = "cpu", mode: str = "prob",
                 template: str = "{question} Answer yes or no.", batch_size: int = 8,
                 use_chat_template: bool | None = None) -> None:
        if mode not in ("prob", "exact"):
            raise ValueError(f"mode must be 'prob' or 'exact', got {mode!r}.")
        if "{question}" not in template:
            raise ValueError("The VQA template must contain '{question}'.")
        self.model, self.processor, self.name, self.mode = model.eval(), processor, name, mode
        self.device, self.template, self.batch_size = torch.device(device), template, batch_size
        if use_chat_template is None:
            use_chat_template = getattr(processor, "chat_template", None) is not None
        self.use_chat_template = use_chat_template
        tok = getattr(processor, "tokenizer", processor)
        self.tokenizer = tok
        if mode == "prob":
            self.yes_ids, self.no_ids = _word_ids(tok, ["yes", "Yes"]), _word_ids(tok, ["no", "No"])

    @classmethod
    def from_pretrained(cls, ref: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                        trust_remote_code: bool = False, **kwargs) -> GenerativeVQAScorer:
        from transformers import AutoProcessor

        try:
            processor = AutoProcessor.from_pretrained(ref, trust_remote_code=trust_remote_code)
            model = load_image_text_model(ref, dtype, trust_remote_code).to(device)
        except (OSError, ValueError) as err:
            raise describe_load_error(err, "VQA model", ref) from err
        return cls(model, processor, name=ref, device=device, **kwargs)

    def _inputs(self, images: list[Image.Image], questions: list[str]):
        texts = [self.template.format(question=q) for q in questions]
        if self.use_chat_template:
            texts = [
                self.processor.apply_chat_template(
                    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": t}]}],
                    add_generation_prompt=True, tokenize=False)
                for t in texts
            ]
        kwargs = {"padding": True} if len(texts) > 1 else {}
        if hasattr(self.tokenizer, "padding_side"):
            self.tokenizer.padding_side = "left"  # decoder-only models continue from the last position
        return self.processor(images=images, text=texts, return_tensors="pt", **kwargs).to(self.device)

    @torch.no_grad()
    def score(self, images: Sequence[Image.Image], questions: Sequence[str]) -> list[float]:
        _check_pairs(images, questions)
        out: list[float] = []
        for start in range(0, len(images), self.batch_size):
            ims = [im.convert("RGB") for im in images[start : start + self.batch_size]]
            inputs = self._inputs(ims, list(questions[start : start + self.batch_size]))
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
            if self.mode == "prob":
                gen = self.model.generate(**inputs, max_new_tokens=1, do_sample=False, output_scores=True,
                                          return_dict_in_generate=True)
                out.extend(yes_probability(gen.scores[0], self.yes_ids, self.no_ids).tolist())
            else:
                gen = self.model.generate(**inputs, max_new_tokens=4, do_sample=False, output_scores=True,
                                          return_dict_in_generate=True)
                new_tokens = gen.sequences[:, gen.sequences.shape[1] - len(gen.scores):]  # the answer only
                for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True):
                    out.append(1.0 if text.strip().lower().startswith("yes") else 0.0)
        return out


def load_image_text_model(ref: str, dtype: torch.dtype, trust_remote_code: bool):
    """A generative vision-language model (LLaVA, Qwen2-VL, ...) by hub id or folder, through whichever of
    transformers' ``AutoModelForImageTextToText`` / ``AutoModelForVision2Seq`` knows its configuration."""
    import transformers

    errors = []
    for name in ("AutoModelForImageTextToText", "AutoModelForVision2Seq"):
        cls = getattr(transformers, name, None)
        if cls is None:
            continue
        try:
            return cls.from_pretrained(ref, dtype=dtype, trust_remote_code=trust_remote_code)
        except ValueError as err:  # unrecognised configuration class for this auto class
            errors.append(f"{name}: {err}")
    raise ValueError(f"{ref!r} is not an image-text-to-text model transformers can load: {'; '.join(errors)}")


def _architectures(ref: str) -> list[str]:
    path = os.path.join(ref, "config.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return list(json.load(f).get("architectures") or [])
    from transformers import AutoConfig

    try:
        return list(AutoConfig.from_pretrained(ref).architectures or [])
    except (OSError, ValueError) as err:
        raise describe_load_error(err, "VQA model", ref) from err


def load_vqa_scorer(ref: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                    mode: str = "prob", trust_remote_code: bool = False, **kwargs) -> VQAScorer:
    """A :class:`BlipVQAScorer` for BLIP VQA checkpoints, a :class:`GenerativeVQAScorer` for anything else."""
    if "BlipForQuestionAnswering" in _architectures(ref):
        return BlipVQAScorer.from_pretrained(ref, device=device, dtype=dtype, mode=mode, **kwargs)
    return GenerativeVQAScorer.from_pretrained(ref, device=device, dtype=dtype, mode=mode,
                                               trust_remote_code=trust_remote_code, **kwargs)
