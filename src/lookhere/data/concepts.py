"""Concepts: the words a sample's objects carry, the regions they name, and their token ids.

A concept is a word ("circle", "red") with a region of the image (every object carrying the word).
The Logit Lens Loss trains on them and the lens reads them: `sample_concepts` gives a sample's
(word, region) pairs, `concept_ids` the token ids whose lens probabilities are summed into
``p(concept | h)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from lookhere.data.sample import Geometry, Sample
from lookhere.data.synthetic.shapes import object_mask

Rule = Literal["first", "sum"]
RULES: tuple[str, ...] = ("first", "sum")
CONCEPT_SCOPES = ("target", "image")
# Context word for encoding a concept mid-sentence: "a cat" minus "a" is " cat" as a tokenizer
# sees it inside a sentence, also for SentencePiece tokenizers that add a dummy prefix space.
_CONTEXT = "a"


def sample_concept(sample: Sample, attributes: Sequence[str] = ("shape", "colour")
                   ) -> tuple[str, Geometry] | None:
    """The concept word of a sample and the region it names, or None when unknown.

    - Samples with objects (Shapes: ``meta["objects"]``, each with ``shape``/``colour`` words and
      its exact mask): the target objects are ``structured["object"]`` (REC) or
      ``structured["objects"]`` (VQA). The word is the first of ``attributes`` that all targets
      share (a VQA count by colour has no common shape, so it falls back to the colour). The
      region is the mask of *every* object in the image with that word, not only the targets':
      the lens of another circle rightly says "circle" and must not be penalised as outside.
    - Other samples may name their concept as ``meta["concept"]``; the region is then the
      sample's geometry, which must cover every instance of the concept in the image.
    """
    objects = sample.meta.get("objects")
    if objects:
        targets = sample.structured.get("objects", sample.structured.get("object"))
        if targets is None:
            return None
        targets = [targets] if isinstance(targets, int) else list(targets)
        for attr in attributes:
            words = {objects[i].get(attr) for i in targets}
            if len(words) == 1 and None not in words:
                word = words.pop()
                return word, Geometry(mask=_objects_mask(objects, attr, word, sample.image.size))
        return None
    word = sample.meta.get("concept")
    if isinstance(word, str) and word.strip() and sample.geometry is not None \
            and not sample.geometry.is_empty():
        return word, sample.geometry
    return None


def sample_concepts(sample: Sample, attributes: Sequence[str] = ("shape", "colour"),
                    scope: str = "image") -> list[tuple[str, Geometry]]:
    """The (concept word, region) pairs LLL trains on for one sample.

    ``scope="target"``: the `sample_concept` of the question's objects, if any. ``"image"``
    (samples with ``meta["objects"]``): every distinct word of ``attributes`` among the image's
    objects (in that order, then by first object), each with the union mask of the objects
    carrying it; other samples fall back to ``"target"``.
    """
    if scope not in CONCEPT_SCOPES:
        raise ValueError(f"scope must be one of {CONCEPT_SCOPES}, got {scope!r}")
    objects = sample.meta.get("objects")
    if scope == "image" and objects:
        size = sample.image.size
        return [(word, Geometry(mask=_objects_mask(objects, attr, word, size)))
                for attr in attributes
                for word in dict.fromkeys(o.get(attr) for o in objects) if word is not None]
    found = sample_concept(sample, attributes)
    return [] if found is None else [found]


def _objects_mask(objects: Sequence[dict[str, Any]], attr: str, word: str,
                  image_size: tuple[int, int]) -> np.ndarray:
    """(H, W) union of the masks of the objects whose ``attr`` is ``word``."""
    w, h = image_size
    mask = np.zeros((h, w), dtype=bool)
    for o in objects:
        if o.get(attr) == word:
            mask |= object_mask(o, (w, h))
    return mask


def concept_ids(tokenizer: Any, concept: str, rule: Rule = "first") -> list[int]:
    """Token ids whose lens probabilities are summed into ``p(concept | h_s)``.

    A logit-lens distribution is a *next-token* distribution, so only a token that can start the
    concept word is evidence that the patch "says" it; later tokens of a multi-token word are
    predictions conditional on the first and would be counted out of context.

    - ``"first"``: one id, the first token of the concept as it appears mid-sentence (after a
      space: the tokenizer's encoding of ``"a " + concept`` minus that of ``"a"``).
    - ``"sum"``: the distinct first tokens of the concept's surface forms: as given, with its
      first letter upper-cased and lower-cased, each mid-sentence (leading space) and at the start
      of a line (no space, as an assistant answer begins in chat templates). Distinct ids at one
      position are exclusive events, so their summed probability is a probability (<= 1): that
      the next word starts as the concept in any of these spellings.

    Leading tokens that decode to whitespace only are skipped in both rules: a tokenizer that
    splits the space off as its own token (the tiny BPE does for most words) would otherwise give
    every concept the same "first token", the space. Raises ValueError for an empty concept, an
    unknown rule, or a concept that encodes to no usable token (nothing but whitespace, unknown
    or special tokens).
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if not isinstance(concept, str) or not concept.strip():
        raise ValueError(f"concept must be a non-empty word or phrase, got {concept!r}")
    word = " ".join(concept.split())
    if rule == "first":
        return [_first_token(tokenizer, word, mid_sentence=True)]
    forms = dict.fromkeys([word, word[0].upper() + word[1:], word[0].lower() + word[1:]])
    ids = [_first_token(tokenizer, f, mid) for f in forms for mid in (True, False)]
    return list(dict.fromkeys(ids))


def _first_token(tokenizer: Any, word: str, mid_sentence: bool) -> int:
    ids = _encode(tokenizer, word, mid_sentence)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    for i in ids:
        if i in special:
            raise ValueError(f"concept {word!r} encodes to special token {i}; not a word")
        if tokenizer.decode([i]).strip():
            return int(i)
    raise ValueError(f"the tokenizer cannot encode concept {word!r} into a word token "
                     f"(got ids {ids})")


def _encode(tokenizer: Any, word: str, mid_sentence: bool) -> list[int]:
    def enc(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False))

    if not mid_sentence:
        return enc(word)
    prefix, full = enc(_CONTEXT), enc(f"{_CONTEXT} {word}")
    if full[: len(prefix)] == prefix and len(full) > len(prefix):
        return full[len(prefix):]
    return enc(" " + word)  # the context merged into the word: encode the spaced word alone
