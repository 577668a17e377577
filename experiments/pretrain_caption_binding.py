"""Diagnostic: does the alignment stage bind? Teacher-forced held-out captions, scored at the
words that need a lookup by content.

Each held-out Scenes caption (seed 10,000, random object order, both word orders) is fed to the
model after its prompt; at every object the model's next-token prediction is checked where a
word must be found by what the caption has just named: the colour after "a <size> <shape>,"
(colour given shape), the shape after "a <size> <colour>" (shape given colour), and the first
digit of the box's x0 after "at [0." (the box given the object). Guessing among the objects
present is printed beside each.

    python experiments/pretrain_caption_binding.py --model runs/pretrain3/align/final --n 100
"""

import argparse

import numpy as np
import torch

from lookhere.collate import GroundingCollator, split_aux
from lookhere.data.synthetic import make_task
from lookhere.models.loading import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--n", type=int, default=100)
    args = p.parse_args()
    torch.set_num_threads(1)
    model, processor, adapter = load_model(args.model, dtype="float32")
    model.eval()
    tok = processor.tokenizer
    task = make_task("scenes", seed=10_000, mode="caption", marker_prob=0.0)
    hits: dict[str, list[bool]] = {"colour given shape": [], "shape given colour": [],
                                   "box x0 digit given object": []}
    chance: dict[str, list[float]] = {k: [] for k in hits}
    collate = GroundingCollator(processor, adapter, targets=False)
    for i in range(args.n):
        s = task.sample(i)
        inputs, _ = split_aux(collate([s]))
        with torch.no_grad():
            pred = model(**inputs).logits[0].argmax(-1)  # (L,)
        ids = inputs["input_ids"][0]
        labels = inputs["labels"][0]
        start = int((labels != -100).nonzero()[0])  # first caption token
        text_ids = ids[start:].tolist()
        pieces = [tok.decode(text_ids[:k + 1]) for k in range(len(text_ids))]
        objs = s.meta["objects"]
        colours, shapes = {o["colour"] for o in objs}, {o["shape"] for o in objs}
        for k in range(1, len(text_ids)):
            before, word = pieces[k - 1], tok.decode([text_ids[k]]).strip()
            tail = before.rsplit(";", 1)[-1]
            right = int(pred[start + k - 1]) == text_ids[k]
            parts = tail.replace(",", " ,").split()
            if word in colours and parts[-1:] == [","] and len(parts) >= 4:
                hits["colour given shape"].append(right)
                chance["colour given shape"].append(1 / len(colours))
            elif word in shapes and len(parts) == 3 and parts[-1] in colours:
                hits["shape given colour"].append(right)
                chance["shape given colour"].append(1 / len(shapes))
            elif tail.endswith("at [0.") and word.isdigit():
                hits["box x0 digit given object"].append(right)
                chance["box x0 digit given object"].append(float("nan"))
    for k, v in hits.items():
        c = np.nanmean(chance[k]) if v and not np.all(np.isnan(chance[k])) else float("nan")
        print(f"{args.model} {k}: accuracy {100 * np.mean(v):.1f}% (n={len(v)}), guessing "
              f"among the present {100 * c:.1f}%")


if __name__ == "__main__":
    main()
