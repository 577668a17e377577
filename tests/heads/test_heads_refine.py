"""The SAM refiner on a tiny random `SamModel`: masks at the image's resolution that equal SAM
called directly with a hand-normalised box and hand-upsampled logits; batches equal one-by-one
calls; the `from_pretrained` path round-trips; bad boxes and images raise."""

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tinysam import SIDE, tiny_sam
from transformers.models.sam import SamImageProcessorPil

from lookhere.heads.grounding import ground
from lookhere.heads.refine import Refiner, SamRefiner, refine_masks
from lookhere.models.layout import GridGeometry

pytestmark = pytest.mark.usefixtures("one_thread")





def noise(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def sam():
    return tiny_sam()


def reference_mask(model, processor, image, box, multimask):
    """SAM called directly: the box scaled by hand to the longest-edge resize, the best logits
    upsampled by hand (to the padded input, crop the padding, to the image) and thresholded."""
    w, h = image.size
    scale = SIDE / max(w, h)
    new_h, new_w = int(h * scale + 0.5), int(w * scale + 0.5)
    sx, sy = new_w / w, new_h / h
    x0, y0, x1, y1 = box
    boxes = torch.tensor([[[x0 * sx, y0 * sy, x1 * sx, y1 * sy]]])
    pixels = processor.image_processor(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model(pixel_values=pixels, input_boxes=boxes, multimask_output=multimask)
    low = out.pred_masks[0, 0, out.iou_scores[0, 0].argmax()]  # (32, 32)
    up = F.interpolate(low[None, None], (SIDE, SIDE), mode="bilinear", align_corners=False)
    up = F.interpolate(up[..., :new_h, :new_w], (h, w), mode="bilinear", align_corners=False)
    return (up[0, 0] > 0).numpy()


@pytest.mark.parametrize("multimask", [True, False])
def test_mask_equals_sam_called_directly(sam, multimask):
    model, processor = sam
    refiner = SamRefiner(model, processor, multimask=multimask)
    image, box = noise(90, 50, 0), (10.0, 5.0, 40.0, 30.0)
    mask = refiner(image, box)
    assert isinstance(refiner, Refiner)
    assert mask.shape == (50, 90) and mask.dtype == bool
    assert 0 < mask.mean() < 1  # not a degenerate all-or-nothing mask
    np.testing.assert_array_equal(mask, reference_mask(model, processor, image, box, multimask))
    other = refiner(image, (50.0, 20.0, 90.0, 50.0))  # the box reaches the prompt encoder
    assert (other != mask).any()


def test_batch_equals_one_by_one(sam):
    refiner = SamRefiner(*sam, batch_size=2)
    images = [noise(90, 50, 0), noise(40, 70, 1), noise(64, 64, 2)]
    boxes = [(10, 5, 40, 30), (1, 2, 30, 60), (0, 0, 64, 64)]
    many = refiner.refine_many(images, boxes)
    assert [m.shape for m in many] == [(50, 90), (70, 40), (64, 64)]
    for image, box, mask in zip(images, boxes, many, strict=True):
        np.testing.assert_array_equal(mask, refiner(image, box))


def test_from_pretrained_round_trip(sam, tmp_path):
    model, processor = sam
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = SamRefiner.from_pretrained(tmp_path)
    image, box = noise(90, 50, 0), (10, 5, 40, 30)
    np.testing.assert_array_equal(loaded(image, box), SamRefiner(model, processor)(image, box))
    half = SamRefiner.from_pretrained(tmp_path, device="cpu", dtype=torch.bfloat16)
    assert half.model.dtype == torch.bfloat16
    mask = half(image, box)
    assert mask.shape == (50, 90) and mask.dtype == bool
    # no torchvision here: transformers falls back to SAM's PIL image processor
    assert importlib.util.find_spec("torchvision") is None
    assert isinstance(loaded.processor.image_processor, SamImageProcessorPil)


def test_bad_inputs(sam):
    refiner = SamRefiner(*sam)
    image = noise(90, 50, 0)
    for bad in [(0, 0, 91, 10), (-1, 0, 10, 10), (0, 0, 10, 51), (20, 0, 10, 10)]:
        with pytest.raises(ValueError, match="box must lie inside the 90x50 image"):
            refiner(image, bad)
    for bad in [(0, 0, 10), [[0, 0], [10, 10]], (0, 0, float("nan"), 10), "box"]:
        with pytest.raises(ValueError, match="box must be 4 finite numbers"):
            refiner(image, bad)
    with pytest.raises(ValueError, match="images and boxes"):
        refiner.refine_many([image, image], [(0, 0, 10, 10)])
    with pytest.raises(ValueError, match="PIL images"):
        refiner(np.zeros((50, 90, 3), dtype=np.uint8), (0, 0, 10, 10))
    with pytest.raises(ValueError, match="batch_size"):
        SamRefiner(*sam, batch_size=0)


def test_refine_masks_takes_any_callable():
    geo = GridGeometry(rows=4, cols=4, cell_size=(10.0, 10.0), scale=(1.0, 1.0),
                       offset=(0.0, 0.0), image_size=(40, 30))
    maps = np.zeros((4, 4))
    maps[1, 1:3] = 1.0
    found = ground(maps, geo, sigma=0)
    seen = []

    def box_fill(image, box, grounding=None):  # a refiner without refine_many
        seen.append(grounding)
        out = np.zeros(image.size[::-1], dtype=bool)
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        out[y0:y1, x0:x1] = True
        return out

    image = noise(40, 30, 3)
    (mask,) = refine_masks(box_fill, [image], [found])
    assert seen == [found] and mask.sum() == 20 * 10 and mask[10:20, 10:30].all()
    with pytest.raises(ValueError, match=r"\(30, 40\) bool array"):
        refine_masks(lambda im, box, g=None: np.zeros((40, 30), dtype=bool), [image], [found])
    with pytest.raises(ValueError, match=r"\(30, 40\) bool array"):
        refine_masks(lambda im, box, g=None: np.zeros((30, 40)), [image], [found])
