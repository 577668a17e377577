"""`open_rgb`, the one opener of user images: 16-bit images scaled (not clipped to white), the
pixel limit checked from the header before decoding, EXIF orientation applied when asked."""

import numpy as np
import pytest
from PIL import Image

from lookhere.data.image import MAX_PIXELS, open_rgb


def test_sixteen_bit_png_is_scaled_not_white(tmp_path):
    values = np.linspace(0, 65535, 40 * 30).astype(np.uint16).reshape(30, 40)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)  # a 16-bit greyscale PNG
    with Image.open(path) as im:
        assert im.mode.startswith("I")
    got = np.asarray(open_rgb(path))  # (30, 40, 3) uint8
    want = (values.astype(np.int64) >> 8).astype(np.uint8)  # the top 8 of the 16 bits
    assert got.shape == (30, 40, 3) and (got == want[..., None]).all()
    assert got.min() == 0 and got.max() == 255  # the whole range, not all white


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("1", (12000, 9000)).save(path)  # 108 M pixels in a small file
    assert 12000 * 9000 > MAX_PIXELS
    with pytest.raises(ValueError, match="12000x9000 pixels is over the limit"):
        open_rgb(path)
    small = tmp_path / "small.png"
    Image.new("RGB", (20, 20)).save(small)
    with pytest.raises(ValueError, match="20x20"):
        open_rgb(small, max_pixels=399)
    assert open_rgb(small, max_pixels=400).size == (20, 20)


def test_exif_orientation_only_when_asked(tmp_path):
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)  # 30 wide, 20 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display", as a phone held upright writes
    path = tmp_path / "phone.png"
    Image.fromarray(stored).save(path, exif=exif)
    shown = np.asarray(open_rgb(path, exif=True))
    assert shown.shape == (30, 20, 3) and (shown == np.rot90(stored, k=-1)).all()
    assert (np.asarray(open_rgb(path)) == stored).all()  # annotated datasets: stored pixels
