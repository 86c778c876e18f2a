"""A 5x7 pixel font for the few labels on overlay pictures (orientation letters, score scale).

Enough to write numbers and the anatomical directions without an imaging library.
"""

from __future__ import annotations

import numpy as np

GLYPH_W, GLYPH_H = 5, 7

_FONT = {
    "0": ["01110", "10001", "10011", "10101", "11001", "10001", "01110"],
    "1": ["00100", "01100", "00100", "00100", "00100", "00100", "01110"],
    "2": ["01110", "10001", "00001", "00010", "00100", "01000", "11111"],
    "3": ["11110", "00001", "00001", "01110", "00001", "00001", "11110"],
    "4": ["00010", "00110", "01010", "10010", "11111", "00010", "00010"],
    "5": ["11111", "10000", "11110", "00001", "00001", "10001", "01110"],
    "6": ["00110", "01000", "10000", "11110", "10001", "10001", "01110"],
    "7": ["11111", "00001", "00010", "00100", "01000", "01000", "01000"],
    "8": ["01110", "10001", "10001", "01110", "10001", "10001", "01110"],
    "9": ["01110", "10001", "10001", "01111", "00001", "00010", "01100"],
    ".": ["00000", "00000", "00000", "00000", "00000", "01100", "01100"],
    "-": ["00000", "00000", "00000", "11111", "00000", "00000", "00000"],
    "+": ["00000", "00100", "00100", "11111", "00100", "00100", "00000"],
    "e": ["00000", "00000", "01110", "10001", "11111", "10000", "01110"],
    "A": ["01110", "10001", "10001", "11111", "10001", "10001", "10001"],
    "I": ["01110", "00100", "00100", "00100", "00100", "00100", "01110"],
    "L": ["10000", "10000", "10000", "10000", "10000", "10000", "11111"],
    "P": ["11110", "10001", "10001", "11110", "10000", "10000", "10000"],
    "R": ["11110", "10001", "10001", "11110", "10100", "10010", "10001"],
    "S": ["01111", "10000", "10000", "01110", "00001", "00001", "11110"],
    " ": ["00000"] * 7,
}
_MASKS = {c: np.array([[ch == "1" for ch in row] for row in rows]) for c, rows in _FONT.items()}


def text_size(text: str, scale: int = 1) -> tuple[int, int]:
    """(height, width) in pixels of ``text`` written at ``scale``."""
    return GLYPH_H * scale, max(0, len(text) * (GLYPH_W + 1) - 1) * scale


def draw_text(rgb: np.ndarray, text: str, row: int, col: int, colour, scale: int = 1) -> None:
    """Write ``text`` into the float RGB image ``rgb`` with its top-left corner at (row, col);
    what falls outside the image is clipped. Characters without a glyph are left out."""
    colour = np.asarray(colour, dtype=rgb.dtype)
    h, w = rgb.shape[:2]
    for i, char in enumerate(text):
        mask = _MASKS.get(char)
        if mask is None:
            continue
        mask = np.kron(mask, np.ones((scale, scale), dtype=bool))
        r0, c0 = row, col + i * (GLYPH_W + 1) * scale
        rs, cs = slice(max(r0, 0), min(r0 + mask.shape[0], h)), slice(max(c0, 0), min(c0 + mask.shape[1], w))
        if rs.start >= rs.stop or cs.start >= cs.stop:
            continue
        sub = mask[rs.start - r0 : rs.stop - r0, cs.start - c0 : cs.stop - c0]
        rgb[rs, cs][sub] = colour
