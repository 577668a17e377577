"""``lookhere lens``: logit-lens maps of words on one image or on a dataset folder.

For each image, word and layer, the probability of the word's token at every visual token
(`lookhere.lens.lens_maps`, on the image's first grid) is written as an overlay PNG,
``--out/overlays/<image>/<word>_L<layer>.png``, and all maps as one JSON,
``--out/maps.json`` (`lookhere.lens.LensMapSet`). ``--masks`` also writes each map's segmentation
(`lookhere.maps.segment`) as a PNG at the image's size, 255 inside, under ``--out/masks/``.
The image is named by its file's stem (``--image``) or by the sample's id (``--data``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lookhere.cli.common import (
    add_device,
    add_overwrite,
    check_out_dir,
    fail,
    load_model_for_cli,
    positive_int,
    read_data,
    read_image,
)

PROG = "lookhere lens"
MAPS = "maps.json"

#: the commands this module adds, with their one-line help (`lookhere --help`)
COMMANDS = {"lens": "logit-lens maps of words on an image or a dataset folder (PNG + JSON)"}


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lens", help=COMMANDS["lens"], description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lookhere:llava-mini", metavar="PATH",
                   help="model folder, hub name or lookhere:<name> (default lookhere:llava-mini)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", type=Path, metavar="IMG", help="an image file")
    src.add_argument("--data", type=Path, metavar="DIR",
                     help="a dataset folder (`lookhere data make`)")
    p.add_argument("--limit", type=positive_int, metavar="N", help="with --data: first N only")
    p.add_argument("--question", metavar="TEXT",
                   help="the prompt's text after the image (default \"Describe the image.\")")
    p.add_argument("--words", nargs="+", metavar="WORD",
                   help="words (or phrases) to map; with --data the default is each sample's own "
                        "concept words (its objects' shapes and colours), where it has them")
    p.add_argument("--layers", type=int, nargs="+", default=[-1], metavar="L",
                   help="decoder layers, negative from the end (default -1, the last)")
    p.add_argument("--rule", default="first", choices=("first", "sum"),  # data.concepts.RULES
                   help="the word's tokens: its first token mid-sentence (default), or the sum "
                        "over the first tokens of its spellings")
    p.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="folder for maps.json, overlays/ and masks/ (new or empty, unless "
                        "--overwrite)")
    add_overwrite(p)
    p.add_argument("--masks", action="store_true", help="also write segmentation masks as PNGs")
    p.add_argument("--threshold", default="mean", metavar="T",
                   help="with --masks: mean (default), two_mean, or a fraction of the map's max")
    p.add_argument("--batch-size", type=positive_int, default=8, metavar="N",
                   help="images per forward (default 8)")
    add_device(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_lens)


def _lens(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from lookhere.lens import LensMapSet, lens_maps
    from lookhere.viz import plot_lens_overlays

    threshold = _check_options(args)
    names, images, own = _inputs(args)
    model, processor, adapter = load_model_for_cli(args.model, args.device, PROG)
    layers = _layers(args.layers, adapter.num_layers)
    words = [list(args.words)] * len(images) if args.words else own
    ids = _word_ids(processor, list(dict.fromkeys(w for ws in words for w in ws)), args.rule)
    records = []
    bar = tqdm(total=len(images), desc="lens", unit="image",
               disable=args.quiet or args.image is not None)
    for start in range(0, len(images), args.batch_size):
        chunk = slice(start, start + args.batch_size)
        chunk_words = words[chunk]
        union = list(dict.fromkeys(w for ws in chunk_words for w in ws))
        result = lens_maps(model, processor, adapter, images[chunk], union, layers,
                           rule=args.rule, prompt=args.question, batch_size=args.batch_size)
        records += result.records(names[chunk], chunk_words)
        plot_lens_overlays(result, images[chunk], args.out / "overlays", names[chunk],
                           chunk_words)
        if args.masks:
            _write_masks(result, names[chunk], chunk_words, args.out / "masks", threshold)
        bar.update(len(chunk_words))
    bar.close()
    LensMapSet(args.model, args.rule, result.prompt, list(layers), ids, records).save(
        args.out / MAPS)
    print(f"wrote {len(records)} maps ({len(images)} images, {len(ids)} words, layers "
          f"{', '.join(map(str, layers))}) to {args.out}")
    return 0


def _check_options(args: argparse.Namespace) -> Any:
    """The options that need no model or data, before any work; the mask threshold."""
    from lookhere.maps import parse_threshold

    if args.words:  # as the lens names its concepts: spaces collapsed; each word once
        args.words = list(dict.fromkeys(" ".join(w.split()) for w in args.words))
    if args.data is None and args.limit is not None:
        raise fail("--limit only applies with --data", PROG)
    if args.question is not None and not args.question.strip():
        raise fail("--question must not be empty (leave it out for the default)", PROG)
    try:
        threshold = parse_threshold(args.threshold)
    except ValueError as err:
        raise fail(f"--threshold: {err}", PROG) from None
    check_out_dir(args.out, PROG, overwrite=args.overwrite)
    return threshold


def _inputs(args: argparse.Namespace) -> tuple[list[str], list[Any], list[list[str]]]:
    """(names, images, each image's own concept words) of ``--image`` or ``--data``; the words
    are needed (and checked) only without ``--words``."""
    if args.image is not None:
        if not args.words:
            raise fail("--image needs --words, the words to map", PROG)
        return [args.image.stem], [read_image(args.image, PROG)], [[]]
    from lookhere.data.concepts import sample_concepts

    samples = read_data(args.data, args.limit, PROG)
    own = [list(dict.fromkeys(w for w, _ in sample_concepts(s))) for s in samples]
    if not args.words:
        bare = [s.id for s, ws in zip(samples, own, strict=True) if not ws]
        if bare:
            raise fail(f"--data: sample {bare[0]!r} ({len(bare)} in all) has no concept words "
                       f"of its own; give --words", PROG)
    return [s.id for s in samples], [s.image for s in samples], own


def _layers(layers: list[int], total: int) -> tuple[int, ...]:
    from lookhere.config.layers import resolve_layers

    try:
        return resolve_layers(layers, total)
    except ValueError as err:
        raise fail(f"--layers: {str(err).removeprefix('layers: ')}", PROG) from None


def _word_ids(processor: Any, words: list[str], rule: str) -> dict[str, list[int]]:
    """Each word's token ids under ``rule`` (`lookhere.data.concepts.concept_ids`); a word the
    tokenizer cannot encode as a word token is an error, and a word of several tokens is noted
    (the lens reads its first token only: a next-token distribution)."""
    from lookhere.data.concepts import concept_ids

    tok = getattr(processor, "tokenizer", processor)
    ids = {}
    for word in words:
        try:
            ids[word] = concept_ids(tok, word, rule)
        except ValueError as err:
            raise fail(f"--words: {err}", PROG) from None
        pieces = [t for t in tok.encode(" " + word, add_special_tokens=False)
                  if tok.decode([t]).strip()]  # word tokens, not a split-off space
        if len(pieces) > 1:
            print(f"note: {word!r} is {len(pieces)} tokens for this tokenizer; the lens reads "
                  f"its first, {tok.decode(pieces[:1]).strip()!r}", file=sys.stderr)
    return ids


def _write_masks(result: Any, names: list[str], words: list[list[str]], folder: Path,
                 threshold: Any) -> None:
    from lookhere.cli.heads import write_mask
    from lookhere.lens import lens_file

    for i, name in enumerate(names):
        for word in words[i]:
            for layer in result.layers:
                mask = result.segment(i, layer, word, threshold=threshold).pixel_mask  # (H, W)
                write_mask(mask, folder / lens_file(name, word, layer))
