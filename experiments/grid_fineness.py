"""How fine must the grid be for a box made of whole cells to reach IoU 0.5 on Shapes objects?

For held-out Shapes REC objects (2-4 objects, radii 0.10 / 0.16 of the side) at two settings,
the box made of the cells that the object covers at least half of (what a sharp attention map
thresholded at the cell level gives), and the best box of whole cells (brute force over every
cell rectangle): the share of objects whose box reaches IoU >= 0.5.

    python experiments/grid_fineness.py      # docs/methods.md, "Grid fineness"
"""

import itertools

import numpy as np

from lookhere.data.synthetic import make_task
from lookhere.eval.metrics import box_iou


def cell_boxes(mask: np.ndarray, cell: int, rule: float):
    h, w = mask.shape
    cover = mask.reshape(h // cell, cell, w // cell, cell).mean((1, 3))  # (rows, cols)
    rows, cols = np.nonzero(cover >= rule)
    if not len(rows):
        return None
    return (cols.min() * cell, rows.min() * cell, (cols.max() + 1) * cell, (rows.max() + 1) * cell)


def best_cell_box(gold, side: int, cell: int) -> float:
    n = side // cell
    edges = range(n + 1)
    return max(box_iou((x0 * cell, y0 * cell, x1 * cell, y1 * cell), gold)
               for x0, x1 in itertools.combinations(edges, 2)
               for y0, y1 in itertools.combinations(edges, 2))


def main(n: int = 300) -> None:
    for side, cell in ((112, 14), (96, 8)):
        task = make_task("shapes", seed=10_000, image_size=side, min_objects=2, max_objects=4,
                         small_radius=0.10, large_radius=0.16)
        half, best = [], []
        for i in range(n):
            s = task.sample(i)
            gold = s.geometry.boxes[0]
            box = cell_boxes(s.geometry.mask, cell, 0.5)
            half.append(0.0 if box is None else box_iou(box, gold))
            best.append(best_cell_box(gold, side, cell))
        half, best = np.array(half), np.array(best)
        print(f"{side} px, {cell} px cells ({side // cell}x{side // cell}): cells >= half covered "
              f"-> IoU>=0.5 for {100 * (half >= 0.5).mean():.1f}% (mean IoU {half.mean():.2f}); "
              f"best cell box -> {100 * (best >= 0.5).mean():.1f}% (mean {best.mean():.2f})")


if __name__ == "__main__":
    main()
