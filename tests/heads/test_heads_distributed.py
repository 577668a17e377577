"""``lookhere heads find`` sharded over two gloo processes under torchrun against one process.

Each rank scores every other batch and the shards are gathered: rank 0 alone reports and writes
the single-process HeadSpec (counts, heads, tau, per-head statistics), every rank's search
returns it, and the saved batches let a rerun skip every forward.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import torchrun
from heads_dist_worker import BATCH_SIZE, PER_SAMPLE

from lookhere.cli import main
from lookhere.data.disk import read_samples
from lookhere.heads.scoring import HeadScores
from lookhere.heads.search import find_heads
from lookhere.heads.selection import HeadSpec
from lookhere.models import build_tiny
from lookhere.models.loading import load_model
from lookhere.models.tiny import save_tiny

WORKER = Path(__file__).with_name("heads_dist_worker.py")
NUM_SAMPLES = 12

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.distributed]


def test_sharded_search_matches_single_process(tmp_path):
    model_dir, data, out = tmp_path / "model", tmp_path / "rec", tmp_path / "dist"
    save_tiny(*build_tiny("llava", {"layers": 4}, seed=0), model_dir)  # heads skip layers 0-1
    assert main(["data", "make", "shapes", "--n", str(NUM_SAMPLES), "--seed", "3", "--out",
                 str(data), "--set", "image_size=112", "--set", "mode=rec"]) == 0
    proc = torchrun([WORKER, out, model_dir, data], nproc=2)
    assert proc.stdout.count("heads (") == 1  # rank 0 alone reports (and writes)

    samples = list(read_samples(data))
    single = find_heads(*load_model(str(model_dir)), samples, model_id=str(model_dir),
                        per_sample=PER_SAMPLE, batch_size=BATCH_SIZE, progress=False)
    written = HeadSpec.load(out / "heads.json")
    assert written.counts == single.counts and written.heads == single.heads
    assert written.tau == single.tau and written == single
    ids = [s.id for s in samples]
    batches = [ids[i:i + BATCH_SIZE] for i in range(0, NUM_SAMPLES, BATCH_SIZE)]
    for rank in (0, 1):
        calls = json.loads((out / f"calls-{rank}.json").read_text())
        assert calls["world_size"] == 2
        assert calls["first"] == batches[rank::2]  # rank r scores batches r, r + 2, ...
        assert calls["again"] == []  # every batch was on disk
        assert HeadSpec.load(out / f"again-{rank}.json") == single
    # at most per_sample heads counted per sample (fewer when fewer pass tau)
    assert 0 < sum(map(sum, single.counts)) <= PER_SAMPLE * NUM_SAMPLES
    scores = out / "scores"
    names = sorted(p.name for p in scores.iterdir())
    assert names == ["batch_000000.npz", "batch_000001.npz", "batch_000002.npz", "search.json"]
    merged = HeadScores.concat([HeadScores.load(scores / n) for n in names[:3]])
    assert list(merged.sample_ids) == ids
    np.testing.assert_array_equal(merged.s_img.mean(0), np.array(single.mean_s_img))
