"""PNG overlays of an anomaly map on the CT: axial, coronal and sagittal slices through a point.

Radiological display convention: axial seen from the feet (patient right on image left,
anterior up), coronal seen from the front (patient right on image left, superior up),
sagittal seen from the patient's left (anterior on image left, superior up), as PACS viewers
show them. Pixels are square in mm and the three panels share one mm-per-pixel scale.

``overlay_panels`` owns the geometry (pure numpy, exact and testable); ``render_overlay`` draws
the panels with matplotlib's Agg backend (no display needed): its ``inferno`` colormap, a
labelled colour bar, the direction letters in a real font.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nibabel import orientations as nio
from scipy import ndimage

from screener_plans.data.geometry import ras_transform
from screener_plans.io_utils import atomic_path

CT_WINDOW = (-1000.0, 400.0)  # lung to soft tissue in one grey ramp
PANEL_PX = 384  # long side of the largest panel; every panel stays <= 512 px
GAP_PX = 8
COLORBAR_PX = 12
# room right of the colour bar for its tick labels and title, and above the panels for names
LEGEND_ROOM_PX, TITLE_PX = 76, 18
ALPHA_MIN, ALPHA_MAX = 0.25, 0.85  # opacity just above the threshold and at the top score
MARKER_COLOR = "#00ff80"
LABEL_COLOR = "#b4dcff"  # cool, so that no label is mistaken for the warm overlay
# The dark start of inferno would look like a shadow on CT; overlays use its bright part.
CMAP_START = 0.3
VIEWS = ("axial", "coronal", "sagittal")
# direction letters of each view at its (left, right, top, bottom) edge, in display convention
_DIRECTIONS = (("R", "L", "A", "P"), ("R", "L", "S", "I"), ("A", "P", "S", "I"))
LETTER_PX = 14  # the box a direction letter covers (font size 10 px), kept off the overlay


@dataclass
class Panel:
    """One view in display orientation: grey CT in [0, 1], the score, the marked point."""

    name: str
    gray: np.ndarray  # (rows, cols)
    heat: np.ndarray  # (rows, cols), the score
    point: tuple[int, int]  # (row, col) of the marked voxel
    letters: tuple[str, str, str, str]  # at the (left, right, top, bottom) edge


def overlay_cmap():
    """The overlay's colormap: the bright part of matplotlib's ``inferno``."""
    import matplotlib
    from matplotlib.colors import ListedColormap

    return ListedColormap(matplotlib.colormaps["inferno"](np.linspace(CMAP_START, 1.0, 256)), name="screener_inferno")


def _ras_view(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """The array in RAS axis order, as a view (flips and transposes only, no copy)."""
    return nio.apply_orientation(array, ornt)


def _to_ras_index(point, ornt: np.ndarray, shape) -> np.ndarray:
    out = np.zeros(3, dtype=np.int64)
    for src, (dst, flip) in enumerate(np.asarray(ornt)):
        v = int(point[src])
        out[int(dst)] = v if flip > 0 else shape[src] - 1 - v
    return out


def _display(plane: np.ndarray) -> np.ndarray:
    """(first RAS axis, second RAS axis) slice -> image rows/cols in display convention.

    For every view the displayed horizontal axis is the slice's first axis reversed (R, R, A
    point to image left) and the vertical one its second axis reversed (A, S, S point up).
    """
    return plane[::-1, ::-1].T


def _square_pixels(img: np.ndarray, row_mm: float, col_mm: float, pixel_mm: float, order: int) -> np.ndarray:
    shape = (max(1, int(round(img.shape[0] * row_mm / pixel_mm))), max(1, int(round(img.shape[1] * col_mm / pixel_mm))))
    zoom = (shape[0] / img.shape[0], shape[1] / img.shape[1])
    out = ndimage.zoom(img.astype(np.float32), zoom, order=order, mode="nearest", grid_mode=True)
    return out[: shape[0], : shape[1]]


def _argmax_voxel(score: np.ndarray) -> tuple[int, ...]:
    """Voxel of the highest score without copying the map (nanargmax copies 3 times)."""
    order = "F" if score.flags.f_contiguous and not score.flags.c_contiguous else "C"
    flat = score.ravel(order=order)  # a view for C- or F-contiguous maps
    i = int(np.argmax(flat))
    if np.isnan(flat[i]):  # argmax stops at the first NaN
        i = int(np.nanargmax(flat))
    return np.unravel_index(i, score.shape, order=order)


def _reference_levels(score: np.ndarray, threshold: float | None) -> tuple[float, float]:
    """(level where the overlay starts, level where it saturates)."""
    top = float(np.nanmax(score))
    if threshold is not None:
        start = float(threshold)
    else:
        # 95th percentile of the body, estimated on a strided sample (the map's minimum marks
        # the outside of the body).
        step = max(1, int(round((score.size / 2e6) ** (1 / 3))))
        sample = np.asarray(score[::step, ::step, ::step], dtype=np.float64).ravel()
        body = sample[sample > sample.min()] if sample.size else sample
        start = float(np.percentile(body if body.size else sample, 95))
    if not top > start:
        top = start + max(abs(start) * 1e-6, 1e-12)
    return start, top


def overlay_panels(
    image_hu: np.ndarray, score: np.ndarray, affine: np.ndarray, point_voxel=None, window=CT_WINDOW, panel_px=PANEL_PX
) -> list[Panel]:
    """The axial, coronal and sagittal slices through ``point_voxel`` in display orientation.

    ``image_hu`` and ``score`` are on the input grid (file voxel order), ``affine`` maps voxels
    to RAS mm, ``point_voxel`` is 3 ints in file order (default: the score's argmax). Pixels are
    square; the longest extent of the volume spans ``panel_px`` pixels (at most 512).
    """
    image_hu, score = np.asarray(image_hu), np.asarray(score)
    if image_hu.shape != score.shape or image_hu.ndim != 3:
        raise ValueError(f"image {image_hu.shape} and score {score.shape} must be the same 3D grid")
    affine = np.asarray(affine, dtype=np.float64)
    shape = image_hu.shape
    if point_voxel is None:
        point_voxel = _argmax_voxel(score)
    point = np.clip(np.asarray(point_voxel, dtype=np.int64), 0, np.asarray(shape) - 1)

    ornt = ras_transform(affine)
    ras_affine = affine @ nio.inv_ornt_aff(ornt, shape)
    spacing = np.sqrt((ras_affine[:3, :3] ** 2).sum(axis=0))  # mm along RAS axes x, y, z
    ct, sc = _ras_view(image_hu, ornt), _ras_view(score, ornt)
    x, y, z = _to_ras_index(point, ornt, shape)
    ras_shape = ct.shape
    pixel_mm = max(n * s for n, s in zip(ras_shape, spacing)) / min(max(int(panel_px), 16), 512)
    # (slice index, the two in-plane RAS axes, the point within the plane)
    views = [
        ((slice(None), slice(None), z), (0, 1), (x, y)),
        ((slice(None), y, slice(None)), (0, 2), (x, z)),
        ((x, slice(None), slice(None)), (1, 2), (y, z)),
    ]
    lo, hi = float(window[0]), float(window[1])
    panels = []
    for name, (index, (a, b), (pa, pb)), letters in zip(VIEWS, views, _DIRECTIONS):
        gray = _display(np.clip((np.asarray(ct[index], dtype=np.float32) - lo) / (hi - lo), 0.0, 1.0))
        heat = _display(np.asarray(sc[index], dtype=np.float32))
        # display rows run along axis b, columns along axis a
        gray = _square_pixels(gray, spacing[b], spacing[a], pixel_mm, order=1)
        heat = _square_pixels(heat, spacing[b], spacing[a], pixel_mm, order=1)
        row = int((ras_shape[b] - 1 - pb + 0.5) * spacing[b] / pixel_mm)
        col = int((ras_shape[a] - 1 - pa + 0.5) * spacing[a] / pixel_mm)
        panels.append(Panel(name, gray, heat, (row, col), letters))
    return panels


def direction_labels(panel: Panel, start: float) -> list[tuple[str, float, float, str, str]]:
    """(letter, x, y, ha, va) at the middle of each edge, in pixels; a letter that would cover
    overlay pixels (score above ``start``) or does not fit is left out rather than hide them."""
    h, w = panel.gray.shape
    if h < 3 * LETTER_PX or w < 3 * LETTER_PX:
        return []
    hot = panel.heat > start
    left, right, top, bottom = panel.letters
    pad, box = 2, LETTER_PX
    placed = []
    for letter, x, y, ha, va, rows, cols in (
        (left, pad, h / 2, "left", "center", slice(h // 2 - box // 2, h // 2 + box // 2), slice(0, box)),
        (right, w - pad, h / 2, "right", "center", slice(h // 2 - box // 2, h // 2 + box // 2), slice(w - box, w)),
        (top, w / 2, pad, "center", "top", slice(0, box), slice(w // 2 - box // 2, w // 2 + box // 2)),
        (bottom, w / 2, h - pad, "center", "bottom", slice(h - box, h), slice(w // 2 - box // 2, w // 2 + box // 2)),
    ):
        if not hot[rows, cols].any():
            placed.append((letter, x, y, ha, va))
    return placed


def panel_origins(panels: list[Panel]) -> tuple[list[tuple[int, int]], int, int]:
    """Each panel's (top row, left column) in the picture, and the picture's (height, width):
    panels side by side under a title strip, shorter ones centred, the colour bar last."""
    height = max(p.gray.shape[0] for p in panels)
    origins, col = [], 0
    for p in panels:
        origins.append((TITLE_PX + (height - p.gray.shape[0]) // 2, col))
        col += p.gray.shape[1] + GAP_PX
    return origins, TITLE_PX + height, col + COLORBAR_PX + LEGEND_ROOM_PX


def _heat_rgba(heat: np.ndarray, start: float, top: float, cmap) -> np.ndarray:
    u = np.clip((heat - start) / (top - start), 0.0, 1.0)
    rgba = cmap(u)
    rgba[..., 3] = np.where(heat > start, ALPHA_MIN + (ALPHA_MAX - ALPHA_MIN) * u, 0.0)
    return rgba


def render_overlay(
    image_hu: np.ndarray,
    score: np.ndarray,
    affine: np.ndarray,
    point_voxel=None,
    threshold: float | None = None,
    window=CT_WINDOW,
    panel_px: int = PANEL_PX,
) -> np.ndarray:
    """Axial | coronal | sagittal slices through ``point_voxel`` with the map overlaid (uint8 RGB).

    The overlay starts at ``threshold`` (default: the body's 95th score percentile); its colour
    and opacity grow with the score up to the map's maximum. A colour bar on the right is
    labelled in score units; each panel is named and its edges carry the anatomical directions
    (R/L, A/P, S/I); a green cross marks the point. Arguments as ``overlay_panels``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    panels = overlay_panels(image_hu, score, affine, point_voxel, window, panel_px)
    start, top = _reference_levels(np.asarray(score), threshold)
    origins, height, width = panel_origins(panels)
    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor="black")
    FigureCanvasAgg(fig)
    cmap = overlay_cmap()

    def axes_at(row, col, h, w):  # pixel box -> figure fraction (matplotlib's origin is bottom-left)
        return fig.add_axes((col / width, 1 - (row + h) / height, w / width, h / height))

    for p, (row, col) in zip(panels, origins):
        h, w = p.gray.shape
        ax = axes_at(row, col, h, w)
        ax.set_axis_off()
        extent = (-0.5, w - 0.5, h - 0.5, -0.5)
        ax.imshow(p.gray, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest", extent=extent)
        ax.imshow(_heat_rgba(p.heat, start, top, cmap), interpolation="nearest", extent=extent)
        r, c = p.point
        gap, length = 4, 8
        for d in (-1, 1):  # four short ticks around the point, leaving it visible
            ax.plot([c, c], [r + d * gap, r + d * (gap + length)], color=MARKER_COLOR, lw=1)
            ax.plot([c + d * gap, c + d * (gap + length)], [r, r], color=MARKER_COLOR, lw=1)
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        for letter, x, y, ha, va in direction_labels(p, start):
            ax.text(x, y, letter, color=LABEL_COLOR, fontsize=7.5, fontweight="bold", ha=ha, va=va)
        fig.text((col + 3) / width, 1 - 3 / height, p.name, color=LABEL_COLOR, fontsize=8, ha="left", va="top")
    bar_col = origins[-1][1] + panels[-1].gray.shape[1] + GAP_PX
    bar_h = max(height - TITLE_PX - 12, 16)  # room below for the lower tick label
    cax = axes_at(TITLE_PX + 4, bar_col, bar_h, COLORBAR_PX)
    bar = fig.colorbar(ScalarMappable(norm=Normalize(start, top), cmap=cmap), cax=cax)
    bar.set_ticks([start, top])
    bar.ax.tick_params(colors=LABEL_COLOR, labelsize=7, length=2)
    bar.ax.set_yticklabels([f"{start:.3g}", f"{top:.3g}"])
    if bar_h >= 100:  # the vertical title fits beside the bar
        bar.set_label("anomaly score (NLL)", color=LABEL_COLOR, fontsize=7, labelpad=-4)
    bar.outline.set_edgecolor(LABEL_COLOR)
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return np.array(rgba[..., :3], dtype=np.uint8)


def save_png(path, rgb: np.ndarray) -> str:
    """Write ``rgb`` (H, W, 3 uint8) as a PNG file, atomically; returns the path."""
    from matplotlib.image import imsave

    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"expected an (H, W, 3) image, got shape {rgb.shape}")
    with atomic_path(path, suffix=".png") as tmp:
        imsave(tmp, rgb, format="png")
    return str(path)
