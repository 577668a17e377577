"""LLaVA-1.5 pixel <-> grid mapping: hand-computed cases.

The check against the real processor and model (markers; the default, pad-to-square and
shortest-edge < crop settings) is test_layout.py's.
"""

import numpy as np
import pytest
from conftest import tiny

from lookhere.models.llava import llava_geometry


def _processor(do_pad=False, shortest=56, crop=56):
    _, processor = tiny("llava")
    ip = processor.image_processor
    saved = ip.do_pad, dict(ip.size), dict(ip.crop_size)
    ip.do_pad, ip.size, ip.crop_size = do_pad, {"shortest_edge": shortest}, \
        {"height": crop, "width": crop}
    return processor, saved


@pytest.fixture
def restore():
    _, processor = tiny("llava")
    ip = processor.image_processor
    saved = ip.do_pad, ip.size, ip.crop_size
    yield
    ip.do_pad, ip.size, ip.crop_size = saved


@pytest.mark.parametrize(
    "do_pad, shortest, size, scale, offset",
    [
        # resize 80x60 -> short side 56, long int(56*80/60)=74: (74, 56); crop left (74-56)//2=9
        (False, 56, (80, 60), (74 / 80, 56 / 60), (-9, 0)),
        # tall 60x80 -> (56, 74); crop top 9
        (False, 56, (60, 80), (56 / 60, 74 / 80), (0, -9)),
        # pad 80x60 to 80x80 (top (80-60)//2=10), resize x0.7 -> offset y 7
        (True, 56, (80, 60), (0.7, 0.7), (0, 7)),
        # pad 61x97 to 97x97 (left (97-61)//2=18), resize 56/97
        (True, 56, (61, 97), (56 / 97, 56 / 97), (18 * 56 / 97, 0)),
        # shortest 42 < crop 56: 80x60 -> (56, 42); center_crop pads height by ceil(14/2)=7
        (False, 42, (80, 60), (56 / 80, 42 / 60), (0, 7)),
    ],
)
def test_geometry_hand_cases(restore, do_pad, shortest, size, scale, offset):
    processor, _ = _processor(do_pad, shortest)
    geo = llava_geometry(processor.image_processor, size, 4, 4, 14)
    np.testing.assert_allclose(geo.scale, scale)
    np.testing.assert_allclose(geo.offset, offset)
    assert geo.image_size == size and geo.cell_size == (14, 14)


def test_cell_boxes_round_trip():
    processor, saved = _processor(True)
    try:
        geo = llava_geometry(processor.image_processor, (80, 60), 4, 4, 14)
    finally:
        ip = processor.image_processor
        ip.do_pad, ip.size, ip.crop_size = saved
    boxes = geo.cell_boxes(clip=False)  # (4, 4, 4)
    # pad-to-square 80x80, 20 px per cell; 10 px of padding on top and bottom
    np.testing.assert_allclose(boxes[0, 0], [0, -10, 20, 10])
    np.testing.assert_allclose(boxes[3, 3], [60, 50, 80, 70])
    assert geo.point_to_cell(79.9, 0.0) == (0, 3)
    assert geo.point_to_cell(100, 30) is None
    with pytest.raises(ValueError, match="box"):
        geo.box_coverage((10, 10, 5, 20))
