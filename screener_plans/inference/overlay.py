"""PNG overlays of an anomaly map on the CT: axial, coronal and sagittal slices through a point.

Radiological display convention: axial seen from the feet (patient right on image left,
anterior up), coronal seen from the front (patient right on image left, superior up),
sagittal seen from the patient's left (anterior on image left, superior up), as PACS viewers
show them. Pixels are square in mm and the three panels share one mm-per-pixel
scale. The PNG encoder uses only zlib and struct, so no imaging library is needed.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
from nibabel import orientations as nio
from scipy import ndimage

from screener_plans.data.geometry import ras_transform
from screener_plans.inference.glyphs import draw_text, text_size
from screener_plans.io_utils import atomic_path

CT_WINDOW = (-1000.0, 400.0)  # lung to soft tissue in one grey ramp
PANEL_PX = 384  # long side of the largest panel; every panel stays <= 512 px
GAP_PX = 8
LEGEND_PX = 12
ALPHA_MIN, ALPHA_MAX = 0.25, 0.85  # opacity just above the threshold and at the top score
MARKER_RGB = (0, 255, 128)
LABEL_RGB = (180, 220, 255)  # cool, so that no label is mistaken for the warm overlay
SCALE_CHARS = 9  # width of the colour bar's value labels, e.g. "-1.23e+04"
# direction letters of each view at its (left, right, top, bottom) edge, in display convention
_DIRECTIONS = (("R", "L", "A", "P"), ("R", "L", "S", "I"), ("A", "P", "S", "I"))

# matplotlib's "inferno" sampled at 10 evenly spaced points; linear interpolation between
# them is visually indistinguishable from the full table at overlay sizes.
_INFERNO = (
    np.array(
        [
            [0x00, 0x00, 0x04],
            [0x1B, 0x0C, 0x42],
            [0x4B, 0x0C, 0x6B],
            [0x78, 0x1C, 0x6D],
            [0xA5, 0x2C, 0x60],
            [0xCF, 0x44, 0x46],
            [0xED, 0x69, 0x25],
            [0xFB, 0x9A, 0x06],
            [0xF7, 0xD0, 0x3C],
            [0xFC, 0xFF, 0xA4],
        ],
        dtype=np.float64,
    )
    / 255.0
)
# The dark start of the map would look like a shadow on CT; overlays use its bright part.
_CMAP_START = 0.3


def colormap(u: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] for values ``u`` in [0, 1] (inferno), shape ``u.shape + (3,)``."""
    u = np.clip(np.asarray(u, dtype=np.float64), 0.0, 1.0)
    xp = np.linspace(0.0, 1.0, len(_INFERNO))
    return np.stack([np.interp(u, xp, _INFERNO[:, c]) for c in range(3)], axis=-1)


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


def _blend(gray: np.ndarray, score: np.ndarray, start: float, top: float) -> np.ndarray:
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    u = np.clip((score - start) / (top - start), 0.0, 1.0)
    above = score > start
    alpha = np.where(above, ALPHA_MIN + (ALPHA_MAX - ALPHA_MIN) * u, 0.0)[..., None]
    color = colormap(_CMAP_START + (1.0 - _CMAP_START) * u)
    return rgb * (1.0 - alpha) + color * alpha


def _marker(rgb: np.ndarray, row: int, col: int) -> None:
    """Four short ticks around (row, col), leaving the point itself visible."""
    h, w = rgb.shape[:2]
    gap, length = 4, 8
    colour = np.asarray(MARKER_RGB, dtype=np.float64) / 255.0
    for d in (-1, 1):
        r0, r1 = sorted((row + d * gap, row + d * (gap + length)))
        c0, c1 = sorted((col + d * gap, col + d * (gap + length)))
        if 0 <= col < w:
            rgb[max(r0, 0) : max(min(r1, h), 0), col] = colour
        if 0 <= row < h:
            rgb[row, max(c0, 0) : max(min(c1, w), 0)] = colour


def _label_directions(rgb: np.ndarray, letters, scale: int, keep_clear: np.ndarray) -> None:
    """The anatomical direction at the middle of each edge of a panel (when it has room); a
    letter that would cover overlay pixels (``keep_clear``) is left out rather than hide them."""
    h, w = rgb.shape[:2]
    th, tw = text_size("R", scale)
    if h < 3 * th or w < 3 * tw:
        return
    colour = np.asarray(LABEL_RGB) / 255.0
    left, right, top, bottom = letters
    for letter, row, col in (
        (left, (h - th) // 2, 2),
        (right, (h - th) // 2, w - tw - 2),
        (top, 2, (w - tw) // 2),
        (bottom, h - th - 2, (w - tw) // 2),
    ):
        if not keep_clear[row : row + th, col : col + tw].any():
            draw_text(rgb, letter, row, col, colour, scale)


def _text_scale(panel_px: int) -> int:
    return 2 if panel_px >= 200 else 1


def _scale_labels(height: int, start: float, top: float, scale: int) -> np.ndarray:
    """A strip beside the colour bar: the top score at its top, the overlay's start at its foot."""
    th, tw = text_size("0" * SCALE_CHARS, scale)
    strip = np.zeros((height, tw, 3))
    colour = np.asarray(LABEL_RGB) / 255.0
    draw_text(strip, f"{top:.3g}"[:SCALE_CHARS], 0, 0, colour, scale)
    if height >= 3 * th:
        draw_text(strip, f"{start:.3g}"[:SCALE_CHARS], height - th - scale, 0, colour, scale)
    return strip


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

    ``image_hu`` and ``score`` are on the input grid (file voxel order), ``affine`` maps voxels
    to RAS mm, ``point_voxel`` is 3 ints in file order (default: the score's argmax). The
    overlay starts at ``threshold`` (default: the body's 95th score percentile) and its colour
    and opacity grow with the score up to the map's maximum. A thin colour bar is on the right,
    labelled with the map's maximum and the overlay's starting score; each panel's edges carry
    the anatomical directions (R/L, A/P, S/I).
    """
    image_hu = np.asarray(image_hu)
    score = np.asarray(score)
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
    start, top = _reference_levels(score, threshold)

    extent = max(n * s for n, s in zip(ras_shape, spacing))
    long_side = min(max(int(panel_px), 16), 512)
    pixel_mm = extent / long_side
    text_scale = _text_scale(long_side)
    # (slice index, the two in-plane RAS axes, the point within the plane)
    views = [
        ((slice(None), slice(None), z), (0, 1), (x, y)),  # axial
        ((slice(None), y, slice(None)), (0, 2), (x, z)),  # coronal
        ((x, slice(None), slice(None)), (1, 2), (y, z)),
    ]  # sagittal
    lo, hi = float(window[0]), float(window[1])
    panels = []
    for (index, (a, b), (pa, pb)), letters in zip(views, _DIRECTIONS):
        gray = _display(np.clip((np.asarray(ct[index], dtype=np.float32) - lo) / (hi - lo), 0.0, 1.0))
        heat = _display(np.asarray(sc[index], dtype=np.float32))
        # display rows run along axis b, columns along axis a
        gray = _square_pixels(gray, spacing[b], spacing[a], pixel_mm, order=1)
        heat = _square_pixels(heat, spacing[b], spacing[a], pixel_mm, order=1)
        rgb = _blend(gray, heat, start, top)
        row = int((ras_shape[b] - 1 - pb + 0.5) * spacing[b] / pixel_mm)
        col = int((ras_shape[a] - 1 - pa + 0.5) * spacing[a] / pixel_mm)
        _marker(rgb, row, col)
        _label_directions(rgb, letters, text_scale, keep_clear=heat > start)
        panels.append(rgb)

    height = max(p.shape[0] for p in panels)
    legend = colormap(_CMAP_START + (1.0 - _CMAP_START) * np.linspace(1.0, 0.0, height))
    parts = []
    for p in panels + [np.repeat(legend[:, None, :], LEGEND_PX, axis=1), _scale_labels(height, start, top, text_scale)]:
        padded = np.zeros((height, p.shape[1], 3))
        top_px = (height - p.shape[0]) // 2  # shorter panels centred, not hung from the top
        padded[top_px : top_px + p.shape[0]] = p
        parts += [padded, np.zeros((height, GAP_PX, 3))]
    out = np.concatenate(parts[:-1], axis=1)
    return np.round(out * 255.0).astype(np.uint8)


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an 8-bit RGB image (H, W, 3), unfiltered rows, zlib level 6."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"expected an (H, W, 3) image, got shape {rgb.shape}")
    h, w = rgb.shape[:2]
    raw = np.zeros((h, 1 + 3 * w), dtype=np.uint8)  # filter byte 0 (None) before every row
    raw[:, 1:] = rgb.reshape(h, 3 * w)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit truecolour, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


def save_png(path, rgb: np.ndarray) -> str:
    """Write ``rgb`` (H, W, 3 uint8) as a PNG file, atomically; returns the path."""
    data = encode_png(rgb)
    with atomic_path(path, suffix=".png") as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return str(path)
