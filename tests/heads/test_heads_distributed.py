"""The head search sharded over two gloo processes under torchrun against one process.

Each rank scores every other batch and the shards are gathered, so both ranks must return
exactly the single-process HeadSpec (counts, heads, tau, per-head statistics); the saved batches
let a rerun skip every forward.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import torchrun
from heads_dist_worker import BATCH_SIZE, NUM_SAMPLES, search

from lookhere.heads.scoring import HeadScores
from lookhere.heads.selection import HeadSpec

WORKER = Path(__file__).with_name("heads_dist_worker.py")

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.distributed]


def test_sharded_search_matches_single_process(tmp_path):
    torchrun([WORKER, tmp_path / "dist"], nproc=2)
    single = search()
    ids = [f"shapes-s3-{i:07d}" for i in range(NUM_SAMPLES)]
    batches = [ids[i:i + BATCH_SIZE] for i in range(0, NUM_SAMPLES, BATCH_SIZE)]
    for rank in (0, 1):
        calls = json.loads((tmp_path / "dist" / f"calls-{rank}.json").read_text())
        assert calls["world_size"] == 2
        assert calls["first"] == batches[rank::2]  # rank r scores batches r, r + 2, ...
        assert calls["again"] == []  # every batch was on disk
        for name in ("spec", "again"):
            spec = HeadSpec.load(tmp_path / "dist" / f"{name}-{rank}.json")
            assert spec.counts == single.counts and spec.heads == single.heads
            assert spec.tau == single.tau and spec == single
    # at most per_sample=3 heads counted per sample (fewer when fewer pass tau)
    assert 0 < sum(map(sum, single.counts)) <= 3 * NUM_SAMPLES
    scores = tmp_path / "dist" / "scores"
    names = sorted(p.name for p in scores.iterdir())
    assert names == ["batch_000000.npz", "batch_000001.npz", "batch_000002.npz", "search.json"]
    merged = HeadScores.concat([HeadScores.load(scores / n) for n in names[:3]])
    assert list(merged.sample_ids) == ids
    np.testing.assert_array_equal(merged.s_img.mean(0), np.array(single.mean_s_img))
