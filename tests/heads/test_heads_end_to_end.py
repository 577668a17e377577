"""Find heads on a tiny model, save and reload the spec, and ground with it; the maps and boxes
equal those from eager attention maps of the same heads, on every grid of every family; pixel
masks come from the upsampled grid mask or from a (tiny random SAM) refiner."""

from dataclasses import replace
from functools import cache

import numpy as np
import pytest
from conftest import FAMILIES
from test_heads_search import eager_reference
from tinysam import tiny_sam

from lookhere.data.synthetic import make_task
from lookhere.heads.grounding import ground
from lookhere.heads.locate import head_maps, locate
from lookhere.heads.refine import SamRefiner
from lookhere.heads.search import find_heads
from lookhere.heads.selection import HeadSpec
from lookhere.maps import pixel_mask
from lookhere.models import build_tiny, get_adapter

pytestmark = pytest.mark.usefixtures("one_thread")
HEADS = [(3, 1), (2, 0), (3, 3)]  # layers 2-3 of a 4-layer model, in no sorted order


@cache
def four_layers(family):
    """(model, processor, adapter) with 4 LLM layers (the search skips layers 0-1)."""
    model, processor = build_tiny(family, {"layers": 4}, seed=0)
    return model, processor, get_adapter(model)


def samples(n=3, seed=2, sizes=None):
    """Shapes REC samples; ``sizes`` stretches the images (w, h) so processors pad or tile."""
    task = make_task("shapes", seed=seed, image_size=112)
    ss = [task.sample(i) for i in range(n)]
    if sizes:
        ss = [replace(s, image=s.image.resize(sizes[i % len(sizes)])) for i, s in enumerate(ss)]
    return ss


def spec_of(heads, adapter):
    n_layers, n_heads = adapter.num_layers, adapter.num_heads
    return HeadSpec("tiny", list(heads), 0.1, 1, [[0] * n_heads] * n_layers,
                    [[0.0] * n_heads] * n_layers, [[None] * n_heads] * n_layers)


def eager_maps(family, sample, heads):
    """{grid name: ((k, rows, cols) maps, geometry)} from eager ``output_attentions``, one
    sample at a time (no padding), the last text token's row over the image's visual tokens."""
    model, processor, adapter = four_layers(family)
    rows, grids = eager_reference(model, processor, adapter, sample)  # (L, H, K), grids
    out = {}
    for grid in grids:
        maps = [grid.to_grid(rows[layer, head]).numpy() for layer, head in heads]
        out[grid.name] = (np.stack(maps), grid.geometry)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_find_and_locate(family, tmp_path):
    model, processor, adapter = four_layers(family)
    ss = samples(6)
    spec = find_heads(model, processor, adapter, ss, model_id="tiny", batch_size=4,
                      per_sample=2, progress=False)
    assert len(spec.heads) == 3 and all(layer >= 2 for layer, _ in spec.heads)
    assert spec.num_samples == 6 and 0 <= spec.tau <= 1
    spec = HeadSpec.load(spec.save(tmp_path / "heads.json"))
    found = locate(model, processor, adapter, spec, ss[:3], batch_size=2)
    assert len(found) == 3
    for s, g in zip(ss[:3], found, strict=True):
        x0, y0, x1, y1 = g.box
        assert 0 <= x0 < x1 <= s.image.size[0] and 0 <= y0 < y1 <= s.image.size[1]
        # locate reads the adapter's primary grid, the first the eager reference lists
        maps, geometry = next(iter(eager_maps(family, s, spec.heads).values()))
        assert ground(maps, geometry).box == pytest.approx(g.box)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_grid_matches_eager(family):
    model, processor, adapter = four_layers(family)
    ss = samples(3, sizes=[(150, 100), (90, 130), (112, 112)])
    refs = [eager_maps(family, s, HEADS) for s in ss]
    names = list(refs[0])
    for index, name in enumerate(names):
        got = head_maps(model, processor, adapter, ss, HEADS, grid=name, batch_size=2)
        assert len(got) == 3
        for (maps, geometry), ref in zip(got, refs, strict=True):
            want, want_geometry = ref[name]
            assert maps.shape == want.shape and geometry == want_geometry
            np.testing.assert_allclose(maps, want, atol=1e-5)
        by_index = head_maps(model, processor, adapter, ss[:1], HEADS, grid=index)
        np.testing.assert_array_equal(by_index[0][0], got[0][0])
        for component in ["largest", "all"]:
            found = locate(model, processor, adapter, spec_of(HEADS, adapter), ss,
                           batch_size=2, grid=name, component=component)
            for s, g, ref in zip(ss, found, refs, strict=True):
                want, want_geometry = ref[name]
                assert g.box == pytest.approx(ground(want, want_geometry, component=component).box)
                np.testing.assert_allclose(g.maps, want, atol=1e-5)
                assert g.pixel_mask.shape == s.image.size[::-1]
                np.testing.assert_array_equal(g.pixel_mask, pixel_mask(g.mask, g.geometry))
    primary = head_maps(model, processor, adapter, ss[:1], HEADS)[0]
    np.testing.assert_array_equal(primary[0], head_maps(model, processor, adapter, ss[:1],
                                                        HEADS, grid=names[0])[0][0])


def test_llava_next_crops_grid_is_finer():
    model, processor, adapter = four_layers("llava_next")
    s = samples(1)
    (base, _), = head_maps(model, processor, adapter, s, HEADS)
    (crops, geometry), = head_maps(model, processor, adapter, s, HEADS, grid="crops")
    assert crops.shape[1] * crops.shape[2] > base.shape[1] * base.shape[2]
    assert geometry.image_size == s[0].image.size
    for bad in ["tiles", 2, True]:
        with pytest.raises(ValueError, match=r"grid must be .*\['base', 'crops'\]"):
            head_maps(model, processor, adapter, s, HEADS, grid=bad)


def test_locate_with_a_sam_refiner():
    model, processor, adapter = four_layers("llava")
    ss = samples(3)
    refiner = SamRefiner(*tiny_sam(), batch_size=2)
    found = locate(model, processor, adapter, spec_of(HEADS, adapter), ss, refiner=refiner)
    plain = locate(model, processor, adapter, spec_of(HEADS, adapter), ss, pixel_masks=False)
    for s, g, p in zip(ss, found, plain, strict=True):
        assert g.box == p.box and p.pixel_mask is None
        assert g.pixel_mask.shape == s.image.size[::-1] and g.pixel_mask.dtype == bool
        np.testing.assert_array_equal(g.pixel_mask, refiner(s.image, g.box))
    with pytest.raises(ValueError, match="pixel_masks=False"):
        locate(model, processor, adapter, spec_of(HEADS, adapter), ss, refiner=refiner,
               pixel_masks=False)


def test_heads_must_fit_the_model():
    model, processor, adapter = four_layers("llava")
    s = samples(1)
    with pytest.raises(ValueError, match="do not fit"):
        locate(model, processor, adapter, spec_of([(5, 0)], adapter), s)
    with pytest.raises(ValueError, match="do not fit"):
        head_maps(model, processor, adapter, s, [(0, adapter.num_heads)])
    with pytest.raises(ValueError, match="names no head"):
        locate(model, processor, adapter, spec_of([], adapter), s)
    with pytest.raises(ValueError, match="heads must be"):
        head_maps(model, processor, adapter, s, [(1, 2, 3)])
    with pytest.raises(ValueError, match="batch_size"):
        head_maps(model, processor, adapter, s, HEADS, batch_size=0)
