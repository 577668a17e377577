"""Does a pretrained miniature bind the word to the object, or only see what is in the image?

On the evaluation's held-out Shapes colour and shape questions (test seed 10,000): accuracy;
how often the answer names a colour (shape) present in the image at all; and the accuracy of
guessing uniformly among the distinct colours (shapes) present, which is what a model that sees
but does not bind would score.

    python experiments/pretrain_binding.py --model lookhere:llava-mini [--n 200]
"""

import argparse

import numpy as np

from lookhere.eval.runner import generate_answers
from lookhere.experiment.heads import TEST_SEED_OFFSET
from lookhere.experiment.pretrained import WORD_TOKENS, shapes_split
from lookhere.models.loading import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--n", type=int, default=200)
    args = p.parse_args()
    model, processor, adapter = load_model(args.model, dtype="float32")
    model.eval()
    size = model.config.vision_config.image_size
    for kind in ("colour", "shape"):
        samples = shapes_split("vqa", size, TEST_SEED_OFFSET, args.n, vqa_types=(kind,))
        preds = generate_answers(model, processor, adapter, samples, 50, WORD_TOKENS,
                                 progress=False)
        first = [(preds[s.id].split() or [""])[0] for s in samples]
        present = [{o[kind] for o in s.meta["objects"]} for s in samples]
        acc = np.mean([f == s.answer for f, s in zip(first, samples, strict=True)])
        inside = np.mean([f in pr for f, pr in zip(first, present, strict=True)])
        chance = np.mean([1 / len(pr) for pr in present])
        print(f"{args.model} {kind}: accuracy {100 * acc:.1f}%, answer present in the image "
              f"{100 * inside:.1f}%, guessing among the present {100 * chance:.1f}% (n={args.n})")


if __name__ == "__main__":
    main()
