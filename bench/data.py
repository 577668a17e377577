"""Synthetic data generation speed: samples per second per task, one process.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/data.py [--n 300] [--image-size 112]

Generation must never bottleneck training: a demo training step at 112 px takes ~0.4 s for a batch
of 8 on this CPU, i.e. it consumes ~20 samples/s; every task should generate far faster.
"""

from __future__ import annotations

import argparse
import platform
import time

import lookhere.data.synthetic as synthetic


def bench_task(name: str, n: int, image_size: int | None) -> float:
    kwargs = {"image_size": image_size} if image_size else {}
    if image_size and name == "grid_patch":  # one cell per 14 px patch, as the default
        kwargs.update(grid_rows=image_size // 14, grid_cols=image_size // 14)
    task = synthetic.make_task(name, seed=0, **kwargs)
    task.sample(0)  # warm-up (imports, fonts)
    t0 = time.perf_counter()
    for i in range(1, n + 1):
        task.sample(i)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="samples per task")
    ap.add_argument("--image-size", type=int, default=None,
                    help="image side in px (default: each task's default, 336)")
    args = ap.parse_args()
    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, python {platform.python_version()}")
    print("| task | image px | samples/s (1 process) |\n|---|---|---|")
    for name in sorted(n for n in synthetic.TASKS if not n.startswith("_")):
        rate = bench_task(name, args.n, args.image_size)
        print(f"| {name} | {args.image_size or 'default'} | {rate:.0f} |")


if __name__ == "__main__":
    main()
