"""Opening user images safely: a pixel limit checked before decoding, 16-bit images scaled to
8 bits (not clipped to white), and optionally the EXIF orientation applied.

Every loader of images a user supplies goes through `open_rgb`. ``exif=True`` shows the image the
way a viewer does (a phone photo stored sideways with an orientation tag); annotated datasets keep
``exif=False``, because their boxes and points are given on the stored pixels (COCO's are).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

#: the most pixels an input image may have (a 12000 x 9000 PNG took 6 GB to ground)
MAX_PIXELS = 64 * 2**20
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def open_rgb(path: str | Path, *, exif: bool = False, max_pixels: int = MAX_PIXELS
             ) -> Image.Image:
    """The image at ``path`` as 8-bit RGB, checked against ``max_pixels`` before it is decoded."""
    with Image.open(path) as im:
        w, h = im.size
        if w * h > max_pixels:
            raise ValueError(f"{path}: {w}x{h} pixels is over the limit of {max_pixels:,} "
                             f"({max_pixels / 2**20:.0f} Mi pixels); resize it first")
        if exif:
            im = ImageOps.exif_transpose(im)
        if im.mode in _SIXTEEN_BIT:
            # "L" would clip every value above 255 to white: scale 0..65535 down to 0..255
            values = np.clip(np.asarray(im, dtype=np.int64), 0, 65535)
            return Image.fromarray((values >> 8).astype(np.uint8), mode="L").convert("RGB")
        return im.convert("RGB")
