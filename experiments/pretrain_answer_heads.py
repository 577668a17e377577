"""Diagnostic: do a pretrained miniature's heads point at the referred object, and from which
query position? The localization-heads search reads the prompt's last token; the model writes
the box a few tokens later. This teacher-forces Shapes REC prompts with their gold box answer
and scores every head's attention, from the last prompt token and from each of the first answer
tokens, by the pointing game (the highest cell's centre inside the gold box), on the search
seed's expressions (20,000; never a test split). The best heads are chosen on the even-numbered
expressions and scored on the odd-numbered ones, so the maximum over 144 heads is not a
selection effect.

    python experiments/pretrain_answer_heads.py --model runs/pretrain7/instruct/final --n 100
"""

import argparse

import numpy as np
import torch

from lookhere.collate import GroundingCollator, split_aux
from lookhere.experiment.heads import SEARCH_SEED_OFFSET
from lookhere.experiment.pretrained import shapes_split
from lookhere.models.loading import load_model
from lookhere.probe import AttentionProbe, query_positions

POSITIONS = 8  # the last prompt token, then the first 7 answer tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()
    torch.set_num_threads(1)
    model, processor, adapter = load_model(args.model, dtype="float32")
    model.eval()
    size = model.config.vision_config.image_size
    samples = shapes_split("rec", size, SEARCH_SEED_OFFSET, args.n)
    collate = GroundingCollator(processor, adapter, targets=False)
    hits = []  # per batch: (B, L, H, POSITIONS) bool, pointing of each head at each query
    mean_hits = []  # (B, POSITIONS): the mean map of the heads of layers >= 2
    tokens = None
    for start in range(0, len(samples), args.batch_size):
        chunk = samples[start:start + args.batch_size]
        inputs, aux = split_aux(collate(chunk))
        ids = inputs["input_ids"]
        labels = torch.where(aux["answer_mask"].bool(), ids, -100)
        first, _ = query_positions("answer_start", ids, inputs["attention_mask"], labels)
        queries = [list(range(int(f), int(f) + POSITIONS)) for f in first[:, 0]]
        with AttentionProbe(model, queries=queries, keys="visual") as probe, torch.no_grad():
            model(**inputs)
        if tokens is None:  # the token each query position predicts, for the header
            f = int(first[0, 0])
            tokens = processor.tokenizer.convert_ids_to_tokens(ids[0, f + 1:f + 1 + POSITIONS])
        layout = adapter.layout(inputs, [[s.image] for s in chunk], processor)
        rows = torch.stack([probe.rows[layer] for layer in sorted(probe.rows)], 1)  # B L H Q K
        for b, s in enumerate(chunk):
            grid = layout.samples[b].images[0].grids[0]
            maps = grid.to_grid(rows[b]).numpy()  # (L, H, Q, rows, cols)
            centres = grid.geometry.cell_boxes().reshape(-1, 4)
            x0, y0, x1, y1 = s.geometry.boxes[0]
            cx = (centres[:, 0] + centres[:, 2]) / 2
            cy = (centres[:, 1] + centres[:, 3]) / 2
            inside = (x0 <= cx) & (cx < x1) & (y0 <= cy) & (cy < y1)
            flat = maps.reshape(*maps.shape[:3], -1)
            hits.append(inside[flat.argmax(-1)])
            mean = flat[2:].mean((0, 1))  # (Q, cells)
            mean_hits.append(inside[mean.argmax(-1)])
    hits_all = np.stack(hits)  # (N, L, H, Q)
    pick, held = hits_all[0::2].mean(0), hits_all[1::2].mean(0)  # (L, H, Q)
    m = np.stack(mean_hits)[1::2].mean(0)  # (Q,)
    print(f"{args.model}: pointing % on {len(hits_all[1::2])} held-out search-seed expressions "
          f"(heads chosen on {len(hits_all[0::2])} others)")
    print("| query predicts | best 3 heads (chosen) | their pointing | mean map (layers >= 2) |")
    print("|---|---|---|---|")
    for q in range(POSITIONS):
        order = np.argsort(-pick[2:, :, q].ravel())[:3]
        heads = [divmod(int(i), pick.shape[1]) for i in order]
        names = ", ".join(f"L{layer + 2}H{head}" for layer, head in heads)
        scores = " / ".join(f"{100 * held[layer + 2, head, q]:.1f}" for layer, head in heads)
        print(f"| {tokens[q]!r} | {names} | {scores} | {100 * m[q]:.1f} |")


if __name__ == "__main__":
    main()
