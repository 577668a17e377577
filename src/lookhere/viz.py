"""Pictures: contact sheets of samples with their geometry, figure helpers (matplotlib on its own
Agg canvas) and logit-lens overlays."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageDraw

from lookhere.data.sample import Sample
from lookhere.data.synthetic import make_task
from lookhere.io import atomic_path
from lookhere.lens import LensResult, TokenNorms, check_images, layer_index, lens_file

_OVERLAY = (255, 0, 255)  # magenta: rarely a task colour


def draw_geometry(sample: Sample) -> Image.Image:
    """The sample's image with its target geometry outlined (boxes, points, polylines, mask)."""
    img = sample.image.convert("RGB").copy()
    geo = sample.geometry
    if geo.mask is not None:
        arr = np.asarray(img).copy()
        arr[geo.mask] = (0.5 * arr[geo.mask] + 0.5 * np.array(_OVERLAY)).astype(np.uint8)
        img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    for x0, y0, x1, y1 in geo.boxes:
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=_OVERLAY, width=2)
    for line in geo.polylines:
        draw.line([tuple(p) for p in line], fill=_OVERLAY, width=1)
    for x, y in geo.points:
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], outline=_OVERLAY, width=2)
    return img


def contact_sheet(samples: Sequence[Sample], cols: int = 4, cell: int = 256,
                  overlay: bool = True) -> Image.Image:
    """A grid of samples, each with its question and answer below, geometry optionally drawn."""
    if not samples:
        raise ValueError("samples must not be empty")
    rows = -(-len(samples) // cols)
    caption_h = 56
    sheet = Image.new("RGB", (cols * cell, rows * (cell + caption_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, s in enumerate(samples):
        r, c = divmod(i, cols)
        img = draw_geometry(s) if overlay else s.image.convert("RGB")
        k = (cell - 8) // max(img.size)
        if k > 1:  # small images are enlarged by a whole factor, pixels kept sharp
            img = img.resize((img.width * k, img.height * k), Image.Resampling.NEAREST)
        img.thumbnail((cell - 8, cell - 8))
        x, y = c * cell + 4, r * (cell + caption_h) + 4
        sheet.paste(img, (x, y))
        q = textwrap.wrap(f"Q: {s.question}", 40)
        q = q[:3] if len(q) <= 3 else q[:2] + [q[2][:37] + "..."]
        lines = q + textwrap.wrap(f"A: {s.answer}", 40)[:1]  # the answer always shows
        draw.multiline_text((x, y + cell - 4), "\n".join(lines), fill="black", spacing=1)
    return sheet


#: How each of the docs' contact sheets (docs/sheet_<task>.png, 16 samples of seed 0) is drawn:
#: `task_sheet` keywords. Grid Patch leaves out the grid preamble so the caption shows the
#: answer; Shapes shows 8 REC then 8 VQA samples (both modes draw, nearly always, the same
#: scene for an index, so the VQA ones come from the next indices: other images).
DOC_SHEETS: dict[str, dict[str, Any]] = {
    "grid_patch": {"overrides": {"describe_grid": False}},
    "line_intersection": {},
    "line_tracing": {"cell": 336},
    "shapes": {"cell": 336, "mix": ({"mode": "rec"}, {"mode": "vqa"})},
    "scenes": {},
}


def task_sheet(task: str, n: int = 16, seed: int = 0, cols: int = 4, cell: int = 256,
               overrides: Mapping[str, Any] | None = None,
               mix: Sequence[Mapping[str, Any]] = ({},)) -> Image.Image:
    """A contact sheet of a synthetic task's samples 0 to n-1 (`contact_sheet`), made with
    ``make_task(task, seed, **overrides)``. ``mix``: config overrides (on top of ``overrides``)
    that share the sheet in order, sample i drawn with ``mix[i * len(mix) // n]``."""
    if n < 1 or not mix:
        raise ValueError(f"a sheet needs n >= 1 and at least one mix entry, got n={n}, mix={mix}")
    tasks = [make_task(task, seed=seed, **{**(overrides or {}), **m}) for m in mix]
    samples = [tasks[i * len(mix) // n].sample(i) for i in range(n)]
    return contact_sheet(samples, cols=cols, cell=cell)


def save_image(img: Image.Image, path: str | Path) -> Path:
    """Save a PNG atomically (temporary file, then rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path


# ------------------------------------------------------------------------- figures (matplotlib)


def new_figure(width: float, height: float) -> Any:
    """A constrained-layout figure on its own Agg canvas (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # explicit Agg canvas: no pyplot, nothing global to close
    return fig


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Atomic save, the format taken from the path's suffix (.png, .pdf, .svg, ...)."""
    path = Path(path)
    fmt = path.suffix[1:].lower()
    if fmt not in fig.canvas.get_supported_filetypes():
        raise ValueError(f"path must end in an image suffix such as .png, got {str(path)!r}")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi)
    return path


# ------------------------------------------------------------------------- logit-lens maps


def plot_lens_maps(result: LensResult | TokenNorms, images: Sequence[Any], path: str | Path,
                   *, concepts: Sequence[str] | None = None, layers: Sequence[int] | None = None,
                   grid: int = 0, scale: Literal["panel", "shared"] = "panel",
                   names: Sequence[str] | None = None) -> Path:
    """Overlay figure: one row per image, the image then one panel per (concept, layer).

    Each map is drawn (nearest upsampling, ``inferno``) over the faded image at its grid's pixel
    extent; ``scale="panel"`` scales each map to its own max (shown in the title),
    ``"shared"`` puts every panel on one 0..max scale. A `TokenNorms` result draws one panel per
    layer. ``names``: the images' titles (default ``image <i>``). Written atomically; the format
    follows the path's suffix (.png, .pdf, .svg).
    """
    images = check_images(images)
    if len(images) != len(result.maps):
        raise ValueError(f"images has {len(images)} images, the result {len(result.maps)}")
    if names is not None and len(names) != len(images):
        raise ValueError(f"names has {len(names)} entries for {len(images)} images")
    if scale not in ("panel", "shared"):
        raise ValueError(f"scale must be 'panel' or 'shared', got {scale!r}")
    panels = _panels(result, concepts, layers)  # [(title, concept index | None, layer)]
    cells = [[_panel_map(result, i, c, layer, grid) for _, c, layer in panels]
             for i in range(len(images))]
    top = max(float(m.max()) for row in cells for m in row) if scale == "shared" else None
    rows, cols = len(images), 1 + len(panels)
    fig = new_figure(2.4 * cols + 0.6, 2.5 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, image in enumerate(images):
        w, h = image.size
        axes[i][0].imshow(image.convert("RGB"), extent=(0, w, h, 0))
        axes[i][0].set_title(f"image {i}" if names is None else names[i], fontsize=9)
        extent = result.geometries[i][grid].grid_box_to_image(
            (0, 0, result.geometries[i][grid].cols, result.geometries[i][grid].rows), clip=False)
        for j, ((title, _, _), m) in enumerate(zip(panels, cells[i], strict=True), start=1):
            vmax = top if top is not None else float(m.max())
            _overlay(axes[i][j], image, m.numpy(), extent, vmax)
            axes[i][j].set_title(f"{title} (max {float(m.max()):.3g})", fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    kind = "token norm" if isinstance(result, TokenNorms) else f"p(concept), rule={result.rule}"
    fig.suptitle(f"Logit lens: {kind}; maps scaled to "
                 f"{'each panel max' if top is None else f'{top:.3g}'}", fontsize=10)
    return save_figure(fig, path)


def plot_lens_overlays(result: LensResult, images: Sequence[Any], folder: str | Path,
                       names: Sequence[str], words: Sequence[Sequence[str]] | None = None
                       ) -> list[Path]:
    """One overlay figure per image x word x layer: `plot_lens_maps` of the image alone with
    that one panel, at ``folder / lens_file(name, word, layer)``. Image ``i`` is called
    ``names[i]`` and drawn for ``words[i]`` (default: every concept of the result)."""
    images = check_images(images)
    if len(names) != len(images) or (words is not None and len(words) != len(images)):
        raise ValueError(f"names (and words) must give one entry per image: {len(images)} "
                         f"images")
    paths = []
    for i, (image, name) in enumerate(zip(images, names, strict=True)):
        alone = result.pick(i)
        for word in result.concepts if words is None else words[i]:
            for layer in result.layers:
                path = Path(folder) / lens_file(name, word, layer)
                paths.append(plot_lens_maps(alone, [image], path, concepts=[word],
                                            layers=[layer], names=[name]))
    return paths


def _panels(result: LensResult | TokenNorms, concepts: Sequence[str] | None,
            layers: Sequence[int] | None) -> list[tuple[str, int | None, int]]:
    chosen = list(result.layers) if layers is None else list(layers)
    chosen = [result.layers[layer_index(result.layers, layer, result.layers_total)]
              for layer in chosen]
    if isinstance(result, TokenNorms):
        return [(f"|h| L{layer}", None, layer) for layer in chosen]
    names = list(result.concepts) if concepts is None else list(concepts)
    unknown = [c for c in names if c not in result.concepts]
    if unknown:
        raise ValueError(f"concepts {unknown} are not in the result's {result.concepts}")
    return [(f"{c} L{layer}", result.concepts.index(c), layer) for c in names for layer in chosen]


def _panel_map(result: LensResult | TokenNorms, i: int, c: int | None, layer: int,
               grid: int) -> torch.Tensor:
    if not 0 <= grid < len(result.maps[i]):
        raise ValueError(f"grid {grid} is out of range: image {i} has {len(result.maps[i])}")
    return result.map(i, layer, grid=grid) if c is None else result.map(i, layer, c, grid)


def _overlay(ax: Any, image: Any, m: Any, extent: Any, vmax: float) -> None:
    import numpy as np

    w, h = image.size
    grey = np.asarray(image.convert("L"))
    # Faded image: grey levels squeezed into the light end, so the heatmap dominates.
    ax.imshow(grey, cmap="gray", vmin=-255, vmax=255, extent=(0, w, h, 0))
    x0, y0, x1, y1 = extent
    ax.imshow(m, cmap="inferno", vmin=0, vmax=vmax if vmax > 0 else 1, alpha=0.65,
              interpolation="nearest", extent=(x0, x1, y1, y0))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
