"""Analytic chest/upper-abdomen anatomy for the synthetic CT phantom.

Geometry is written in patient millimetres around the body axis: ``u`` to the patient's right
(+x in RAS), ``v`` anterior, ``t`` superior with ``t = 0`` at the top of the right diaphragm
dome. Organs are implicit shapes (ellipses, ellipsoids, smooth random fields) painted into a
*material* map in anatomical order; thin tubular structures (lung and liver vessel trees,
ribs, the aortic arch) are splatted as partial-volume fractions so that sub-voxel vessels
look like the faint dots they are in real CT. :func:`build_anatomy` returns HU (before
blur and noise), the tissue map and the organ masks lesions are placed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np


class Tissue(IntEnum):
    """Tissue classes of :attr:`Phantom.tissue` (stable numbering, recorded in dataset.json)."""

    AIR = 0  # air / outside the body
    FAT = 1
    MUSCLE = 2  # body wall, paraspinal, psoas, diaphragm, skin
    LUNG = 3
    VESSEL = 4  # pulmonary and hepatic vessels
    BLOOD = 5  # heart, aorta, great veins
    LIVER = 6
    KIDNEY = 7
    BONE = 8
    LESION = 9
    SPLEEN = 10
    BOWEL = 11  # stomach and bowel: wall, fluid and gas
    AIRWAY = 12  # trachea and bronchi lumen
    TABLE = 13
    SOFT = 14  # other soft tissue: discs, spinal canal, oesophagus, cartilage, gallbladder


# Material -> tissue class; HU per material comes from the case's contrast protocol.
MATERIALS: dict[str, Tissue] = {
    "air": Tissue.AIR,
    "fat_sc": Tissue.FAT,
    "fat": Tissue.FAT,
    "skin": Tissue.MUSCLE,
    "muscle": Tissue.MUSCLE,
    "lung": Tissue.LUNG,
    "heart_wall": Tissue.BLOOD,
    "blood": Tissue.BLOOD,
    "blood_right": Tissue.BLOOD,
    "ivc": Tissue.BLOOD,
    "liver": Tissue.LIVER,
    "kidney_cortex": Tissue.KIDNEY,
    "kidney_medulla": Tissue.KIDNEY,
    "sinus_fat": Tissue.FAT,
    "bone_cortex": Tissue.BONE,
    "bone_marrow": Tissue.BONE,
    "bone_arch": Tissue.BONE,
    "spleen": Tissue.SPLEEN,
    "bowel_wall": Tissue.BOWEL,
    "bowel_fluid": Tissue.BOWEL,
    "gas": Tissue.BOWEL,
    "airway": Tissue.AIRWAY,
    "table": Tissue.TABLE,
    "table_foam": Tissue.TABLE,
    "disc": Tissue.SOFT,
    "csf": Tissue.SOFT,
    "esophagus": Tissue.SOFT,
    "gallbladder": Tissue.SOFT,
}
MAT = {name: i for i, name in enumerate(MATERIALS)}
# HU keys used besides the materials: partial-volume overlays and the lung density gradient.
OVERLAY_KEYS = ("lung_vessel", "portal", "hepatic", "rib", "cartilage", "airway_wall", "lung_gradient")
_MAT_TISSUE = np.array([int(t) for t in MATERIALS.values()], np.uint8)
# Low-frequency texture amplitude (HU per unit of a smooth random field) per material.
_TEXTURE = {
    "fat_sc": 6.0,
    "fat": 10.0,
    "muscle": 5.0,
    "lung": 14.0,
    "liver": 4.0,
    "spleen": 5.0,
    "kidney_cortex": 4.0,
    "bone_marrow": 40.0,
    "bowel_fluid": 8.0,
}


def smoothstep(x, x0, x1):
    """0 at x0, 1 at x1, cubic in between (x0 > x1 allowed)."""
    s = np.clip((np.asarray(x, np.float32) - x0) / (x1 - x0), 0.0, 1.0)
    return s * s * (3.0 - 2.0 * s)


def _bspline3(x):
    x = np.abs(x)
    return np.where(x < 1, 2.0 / 3.0 - x * x + 0.5 * x**3, np.where(x < 2, (2.0 - x) ** 3 / 6.0, 0.0))


def smooth_field(rng, shape, spacing, scale_mm):
    """Zero-mean, roughly unit-std random field with features ~``scale_mm`` in size.

    Normal values on a coarse lattice interpolated with separable cubic B-splines (three
    small matrix products), which is far cheaper than filtering a full-size white noise.
    """
    mats = []
    for n, d in zip(shape, spacing):
        m = int(np.ceil(n * d / scale_mm)) + 4
        x = np.arange(n) * d / scale_mm + 1.5 + rng.uniform()
        j0 = np.floor(x).astype(int)
        w = np.zeros((n, m), np.float32)
        for o in range(-1, 3):
            w[np.arange(n), np.clip(j0 + o, 0, m - 1)] += _bspline3(x - (j0 + o))
        mats.append(w)
    c = rng.standard_normal([w.shape[1] for w in mats]).astype(np.float32)
    f = (mats[0] @ c.reshape(c.shape[0], -1)).reshape(shape[0], c.shape[1], c.shape[2])
    f = np.matmul(mats[1], f)
    f = f @ mats[2].T
    # Cubic B-spline weights have sum of squares ~0.48 per axis; undo that shrinkage.
    return f * np.float32(0.479**-1.5)


@dataclass
class Grid:
    """Voxel grid with the body axis at voxel (ic, jc); ``t0`` is the anatomical height of slice 0."""

    shape: tuple
    spacing: tuple
    ic: float
    jc: float
    t0: float

    def axes(self, box=None):
        """Broadcastable (u, v, t) mm coordinates of the whole grid or of a box of slices."""
        box = box or tuple(slice(0, n) for n in self.shape)
        dx, dy, dz = self.spacing
        u = (np.arange(box[0].start, box[0].stop, dtype=np.float32) - self.ic) * dx
        v = (np.arange(box[1].start, box[1].stop, dtype=np.float32) - self.jc) * dy
        t = self.t0 + np.arange(box[2].start, box[2].stop, dtype=np.float32) * dz
        return u[:, None, None], v[None, :, None], t[None, None, :]

    def to_vox(self, p):
        p = np.asarray(p, np.float64)
        dx, dy, dz = self.spacing
        return np.stack([self.ic + p[..., 0] / dx, self.jc + p[..., 1] / dy, (p[..., 2] - self.t0) / dz], -1)

    def box(self, lo, hi):
        """Slices covering the mm box [lo, hi] (u, v, t), clipped to the grid; None if empty."""
        a, b = self.to_vox(lo), self.to_vox(hi)
        out = []
        for n, x0, x1 in zip(self.shape, np.minimum(a, b), np.maximum(a, b)):
            s0, s1 = max(int(np.floor(x0)), 0), min(int(np.ceil(x1)) + 1, n)
            if s1 <= s0:
                return None
            out.append(slice(s0, s1))
        return tuple(out)

    def lookup(self, vol, p):
        """Nearest-voxel values of ``vol`` at mm points; False/0 outside the grid."""
        q = np.rint(self.to_vox(p)).astype(np.int64)
        ok = np.all((q >= 0) & (q < np.array(self.shape)), axis=-1)
        out = np.zeros(len(q), vol.dtype)
        out[ok] = vol[q[ok, 0], q[ok, 1], q[ok, 2]]
        return out


# ----------------------------------------------------------------------------- tubes and trees


def _frames(d, up=None):
    """Unit vectors (e1, e2) perpendicular to unit directions d (N,3); e2 follows ``up`` if given."""
    if up is None:
        a = np.where(np.abs(d[:, :1]) < 0.9, [[1.0, 0, 0]], [[0, 1.0, 0]])
        e1 = np.cross(d, a)
    else:
        e1 = np.cross(up, d)
    bad = np.linalg.norm(e1, axis=1) < 1e-6
    e1[bad] = np.cross(d[bad], [0.0, 1.0, 0.0])
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    return e1, np.cross(d, e1)


def _disk(m):
    """m equal-area sample offsets in the unit disk (sunflower pattern)."""
    i = np.arange(m) + 0.5
    r, a = np.sqrt(i / m), i * 2.399963
    return np.stack([r * np.cos(a), r * np.sin(a)], -1) if m > 1 else np.zeros((1, 2))


def tube_samples(p0, p1, ra, rb=None, up=None, step=1.0):
    """Volume samples of straight tubes p0->p1 (elliptic cross-section ra x rb, mm).

    Returns (points (N,3) mm, volume of each sample in mm^3); splatting them gives the
    partial-volume fraction of the tubes on any grid coarser than ``step``.
    """
    p0, p1 = np.atleast_2d(p0).astype(np.float64), np.atleast_2d(p1).astype(np.float64)
    ra = np.broadcast_to(np.asarray(ra, np.float64), (len(p0),))
    rb = ra if rb is None else np.broadcast_to(np.asarray(rb, np.float64), (len(p0),))
    d = p1 - p0
    length = np.maximum(np.linalg.norm(d, axis=1), 1e-6)
    d = d / length[:, None]
    e1, e2 = _frames(d, None if up is None else np.broadcast_to(up, d.shape))
    n_along = np.maximum(np.ceil(length / step).astype(int), 1)
    # Cross-section sample counts rounded up on a ladder (ratio ~1.25) to keep few groups.
    n_cross = np.maximum(np.pi * ra * rb / step**2, 1.0)
    n_cross = np.ceil(1.25 ** np.ceil(np.log(n_cross) / np.log(1.25)) - 1e-6).astype(int)
    pts, vols = [], []
    for m in np.unique(n_cross):
        sel = np.flatnonzero(n_cross == m)
        na = n_along[sel]
        seg = np.repeat(sel, na)
        k = np.arange(na.sum()) - np.repeat(np.cumsum(na) - na, na)
        frac = (k + 0.5) / np.repeat(na, na)
        centre = p0[seg] + d[seg] * (frac * length[seg])[:, None]
        off = _disk(int(m))
        p = (
            centre[:, None, :]
            + (ra[seg, None, None] * off[None, :, :1]) * e1[seg, None, :]
            + (rb[seg, None, None] * off[None, :, 1:]) * e2[seg, None, :]
        )
        vol = np.pi * ra[seg] * rb[seg] * length[seg] / np.repeat(na, na)
        pts.append(p.reshape(-1, 3))
        vols.append(np.repeat(vol / m, m))
    return np.concatenate(pts), np.concatenate(vols)


def splat(grid, pts, vols):
    """Trilinear splat of sample volumes into voxel fractions; returns (box, fraction) or None."""
    if len(pts) == 0:
        return None
    shape = np.array(grid.shape)
    q = grid.to_vox(pts)
    keep = np.all((q > -1) & (q < shape), axis=1)
    q, vols = q[keep], vols[keep]
    if len(q) == 0:
        return None
    lo = np.floor(q.min(0)).astype(int)
    hi = np.floor(q.max(0)).astype(int) + 2
    local = hi - lo
    i0 = np.floor(q).astype(np.int64)
    f = (q - i0).astype(np.float32)
    i0 -= lo
    base = (i0[:, 0] * local[1] + i0[:, 1]) * local[2] + i0[:, 2]
    w = (vols / float(np.prod(grid.spacing))).astype(np.float32)
    wx = (w * (1 - f[:, 0]), w * f[:, 0])
    wy = (1 - f[:, 1], f[:, 1])
    wz = (1 - f[:, 2], f[:, 2])
    size = int(np.prod(local))
    acc = np.zeros(size)
    for a in (0, 1):
        for b in (0, 1):
            wab = wx[a] * wy[b]
            for c in (0, 1):
                off = (a * local[1] + b) * local[2] + c
                acc += np.bincount(base + off, wab * wz[c], minlength=size)
    clo, chi = np.maximum(lo, 0), np.minimum(hi, shape)
    sub = acc.reshape(local)[tuple(slice(a - o, b - o) for a, b, o in zip(clo, chi, lo))]
    box = tuple(slice(a, b) for a, b in zip(clo, chi))
    return box, np.minimum(sub, 1.0).astype(np.float32)


def grow_tree(
    rng,
    grid,
    inside,
    roots,
    r_min,
    decay_mm=50.0,
    p_side=0.85,
    side_ratio=(0.45, 0.85),
    seg_len=(0.5, 1.0),
    outward=0.3,
    max_gen=30,
    max_segments=20000,
):
    """Randomly branching vessel tree from ``roots`` (pos, dir, radius, length arrays), in mm.

    Each segment continues with a slightly bent main branch and, with probability ``p_side``,
    a thinner side branch at a wide angle. Radii shrink exponentially with path length
    (``decay_mm``), so vessels thin toward the periphery; a branch stops below ``r_min`` or
    where it ends outside ``inside`` (bool volume). Returns (p0, p1, radius) per segment.
    """
    pos, dirs, rad, length = (np.asarray(a, np.float64) for a in roots)
    origin = pos.copy()
    out0, out1, outr = [], [], []
    n_seg = 0
    for gen in range(max_gen):
        end = pos + dirs * length[:, None]
        out0.append(pos), out1.append(end), outr.append(rad)
        n_seg += len(pos)
        r_end = rad * np.exp(-length / decay_mm)
        alive = (grid.lookup(inside, end).astype(bool) | (gen < 2)) & (r_end >= r_min)
        if gen == max_gen - 1 or n_seg > max_segments or not alive.any():
            break
        pos, d, r, org = end[alive], dirs[alive], r_end[alive], origin[alive]
        n = len(pos)
        e1, e2 = _frames(d)
        phi = rng.uniform(0, 2 * np.pi, n)
        side = np.cos(phi)[:, None] * e1 + np.sin(phi)[:, None] * e2
        away = pos - org
        away /= np.maximum(np.linalg.norm(away, axis=1, keepdims=True), 1e-6)
        th_main = np.radians(rng.uniform(3, 20, n))
        th_side = np.radians(rng.uniform(35, 75, n))
        main = np.cos(th_main)[:, None] * d + np.sin(th_main)[:, None] * side + 0.5 * outward * away
        sb = rng.uniform(size=n) < p_side
        sdir = (np.cos(th_side)[:, None] * d - np.sin(th_side)[:, None] * side + outward * away)[sb]
        rs = r[sb] * rng.uniform(*side_ratio, sb.sum())
        pos = np.concatenate([pos, pos[sb]])
        dirs = np.concatenate([main, sdir])
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        rad = np.concatenate([r, rs])
        origin = np.concatenate([org, org[sb]])
        length = rng.uniform(*seg_len, len(rad)) * (3.0 + 2.5 * rad)
    return np.concatenate(out0), np.concatenate(out1), np.concatenate(outr)


def _rot(axis, angle):
    c, s = np.cos(angle), np.sin(angle)
    i, j = [(1, 2), (0, 2), (0, 1)][axis]
    m = np.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def ellipsoid_q(grid, centre, semi, rot=None, pad=1.05):
    """(box, q) with q = squared normalised radius of a (rotated) ellipsoid in its bounding box."""
    centre, semi = np.asarray(centre, float), np.asarray(semi, float)
    r = semi.max() * pad
    box = grid.box(centre - r, centre + r)
    if box is None:
        return None, None
    u, v, t = grid.axes(box)
    du, dv, dt = u - centre[0], v - centre[1], t - centre[2]
    if rot is None:
        q = (du / semi[0]) ** 2 + (dv / semi[1]) ** 2 + (dt / semi[2]) ** 2
    else:
        q = 0
        for k in range(3):  # local coordinate k = rot[:, k] . (p - c)
            loc = rot[0, k] * du + rot[1, k] * dv + rot[2, k] * dt
            q = q + (loc / semi[k]) ** 2
    return box, q


# ----------------------------------------------------------------------------- body profile


@dataclass
class Body:
    """Per-patient anatomical parameters; :meth:`at` gives slice-wise body dimensions."""

    s: float  # overall size factor
    h: float  # craniocaudal size factor
    fat: float  # 0 lean .. 1 obese
    a0: float
    b0: float
    k_post: float
    belly: float
    p_body: float
    wig: np.ndarray  # (4,) amplitudes/phases of slow width changes along t
    t_apex: float
    dome_left: float
    dome_depth: float
    heart: float
    liver: float
    kyph: float
    # Organ size factors and the kidneys' craniocaudal shift (mm); the standard family keeps 1 / 0.
    spleen: float = 1.0
    kidney: float = 1.0
    kidney_shift: float = 0.0
    stomach: float = 1.0

    def at(self, t):
        """Body, fat, muscle, cavity and spine dimensions (mm) at heights t (array)."""
        t = np.asarray(t, np.float32)
        s, h = self.s, self.h
        abd = smoothstep(t, 0.0, -70.0 * h)
        neck = smoothstep(t, self.t_apex - 25.0, self.t_apex + 45.0)
        w = self.wig
        wig = 1 + w[0] * np.sin(t / 60.0 + w[1]) + w[2] * np.sin(t / 23.0 + w[3])
        a = self.a0 * wig * (1 - 0.30 * neck) * (1 + 0.05 * abd * self.fat)
        b_ant = self.b0 * (1 + self.belly * abd) * (1 - 0.22 * neck) * (2 - wig)
        b_post = self.b0 * self.k_post * (1 - 0.12 * neck)
        fat = (4 + 26 * self.fat) * s * (1 + 0.5 * abd * self.fat) * (1 - 0.5 * neck)
        f_lat, f_ant, f_post = fat, 0.85 * fat, 0.6 * fat
        # The rib cage narrows toward the apex while the shoulder girdle muscles thicken.
        cone = smoothstep(t, 30.0 * h, self.t_apex + 10.0)
        m_lat = (11 + 3 * self.fat) * s + 0.2 * a * cone
        m_ant = (20 - 10 * abd) * s + 0.1 * b_ant * cone
        m_post = 24 * s + 0.06 * b_post * cone
        a_vb = (16 + 7 * abd) * s
        b_vb = (13 + 4 * abd) * s
        r_canal = 8.0 * s * np.ones_like(t)
        kyph = self.kyph * np.sin((t - self.t_apex) / 250.0 * np.pi)
        v_canal = -b_post + f_post + (30 + 6 * abd) * s + r_canal + kyph
        v_vb = v_canal + r_canal + 3 * s + b_vb
        return dict(
            t=t,
            abd=abd,
            neck=neck,
            a=a,
            b_ant=b_ant,
            b_post=b_post,
            f_lat=f_lat,
            f_ant=f_ant,
            f_post=f_post,
            m_lat=m_lat,
            m_ant=m_ant,
            m_post=m_post,
            ac=a - f_lat - m_lat,
            bca=b_ant - f_ant - m_ant,
            bcp=b_post - f_post - m_post,
            a_vb=a_vb,
            b_vb=b_vb,
            r_canal=r_canal,
            v_canal=v_canal,
            v_vb=v_vb,
        )


def sample_body(rng, max_half_width=None):
    """Random adult body; shrunk uniformly when ``max_half_width`` (mm, incl. margin) is smaller."""
    s = rng.uniform(0.88, 1.1)
    fat = rng.beta(1.6, 2.2)
    a0 = 150 * s * (1 + 0.18 * fat)
    if max_half_width is not None:
        widest = a0 * 1.12 * 1.08  # wiggle + abdominal widening headroom
        if widest > max_half_width:
            shrink = max_half_width / widest
            s, a0 = s * shrink, a0 * shrink
    h = s * rng.uniform(0.93, 1.07)
    return Body(
        s=s,
        h=h,
        fat=fat,
        a0=a0,
        b0=a0 * rng.uniform(0.62, 0.74),
        k_post=rng.uniform(0.84, 0.94),
        belly=rng.uniform(0.0, 0.3) * fat,
        p_body=rng.uniform(2.1, 2.7),
        wig=np.array([rng.uniform(0, 0.04), rng.uniform(0, 6.3), rng.uniform(0, 0.015), rng.uniform(0, 6.3)]),
        t_apex=rng.uniform(175, 205) * h,
        dome_left=rng.uniform(8, 25) * h,
        dome_depth=rng.uniform(55, 80) * h,
        heart=rng.uniform(0.9, 1.12) * s,
        liver=rng.uniform(0.85, 1.15),
        kyph=rng.uniform(-6, 10) * s,
    )


# ----------------------------------------------------------------------------- builder


@dataclass
class Anatomy:
    """Rendered anatomy: HU before blur/noise, tissue classes and organ masks for lesions."""

    hu: np.ndarray
    tissue: np.ndarray
    masks: dict  # bool volumes: lung, liver, kidney, body


class _Painter:
    """Material map plus soft (partial-volume) overlays applied after the HU lookup."""

    def __init__(self, grid):
        self.grid = grid
        self.mat = np.zeros(grid.shape, np.uint8)
        self.soft = []  # (box, fraction, HU key, tissue, materials it may cover or None)
        self.extra = {}  # landmarks shared between organ renderers (hila, bronchi)

    def paint(self, box, mask, name):
        if box is not None:
            self.mat[box][mask] = MAT[name]

    def overlay(self, res, key, tissue, within=None):
        if res is not None:
            self.soft.append((res[0], res[1], key, tissue, within))


def _dome(body, u, v, d):
    """Diaphragm height t over the (u, v) plane (two domes, right higher)."""
    ac, bc = float(d["ac"]), float(d["bcp"])
    doms = []
    for side, peak in ((1.0, 0.0), (-1.0, -body.dome_left)):
        q = ((u - side * 0.42 * ac) / (0.62 * ac)) ** 2 + ((v + 0.05 * bc) / (1.0 * bc)) ** 2
        doms.append(peak - body.dome_depth * q)
    return np.maximum(np.maximum(*doms), -120.0 * body.h)


def build_anatomy(rng, grid, body, hu_of):
    """Render one patient's anatomy on ``grid``.

    ``hu_of`` maps every name in :data:`MATERIALS` and :data:`OVERLAY_KEYS` to HU (the contrast
    protocol). Returns an :class:`Anatomy` with HU before blur and noise.
    """
    g, P = grid, _Painter(grid)
    u, v, t = g.axes()
    d = body.at(t)  # arrays shaped (1, 1, Z)
    s, h = body.s, body.h
    d0 = {k: float(np.asarray(x).ravel()[0]) for k, x in body.at(np.array([0.0])).items()}

    # Body layers: superellipse skin contour with nested fat / muscle / cavity boundaries.
    p = body.p_body
    bsel = lambda ant, post: np.where(v > 0, ant, post)  # noqa: E731 (v-dependent semi-axis)
    qb = np.abs(u / d["a"]) ** p + np.abs(v / bsel(d["b_ant"], d["b_post"])) ** p
    body_m = qb <= 1.0
    P.mat[body_m] = MAT["fat_sc"]
    skin = 1.5
    qs = np.abs(u / (d["a"] - skin)) ** p + np.abs(v / bsel(d["b_ant"] - skin, d["b_post"] - skin)) ** p
    P.mat[body_m & (qs > 1.0)] = MAT["skin"]
    qf = (u / (d["a"] - d["f_lat"])) ** 2 + (v / bsel(d["b_ant"] - d["f_ant"], d["b_post"] - d["f_post"])) ** 2
    P.mat[qf <= 1.0] = MAT["muscle"]
    qc = (u / d["ac"]) ** 2 + (v / bsel(d["bca"], d["bcp"])) ** 2
    cavity = qc <= 1.0
    # Paraspinal muscles and spine block the posterior midline of the cavity.
    vv = np.broadcast_to(v, (1, v.shape[1], t.shape[2]))
    f1 = np.clip((vv - d["v_canal"]) / np.maximum(d["v_vb"] - d["v_canal"], 1), 0, 1)
    w_blk = (46 * s) * (1 - f1) + (d["a_vb"] + 3 * s) * f1
    w_blk = np.where(vv > d["v_vb"] + 0.3 * d["b_vb"], -1.0, w_blk)
    cavity &= ~(np.abs(u) < w_blk)
    P.mat[cavity] = MAT["fat"]

    # Diaphragm, lungs and the thoracic / abdominal split.
    td = _dome(body, u[:, :, 0], v[:, :, 0], d0)[:, :, None]
    above = t > td
    abdomen = cavity & (t < td - 4.5 * s)
    P.mat[cavity & ~above & ~abdomen] = MAT["muscle"]  # diaphragm sheet
    # Each lung ends in a dome: its cross-section shrinks to a point at the apex.
    t_sh = body.t_apex - 85 * h
    k_ap = 1.15 * np.sqrt(1 - np.clip((t - t_sh) / (body.t_apex - t_sh), 0, 1) ** 2)
    q_apex = ((np.abs(u) - 0.45 * d["ac"]) / (0.55 * d["ac"])) ** 2 + ((v + 0.2 * d["bcp"]) / (0.8 * d["bcp"])) ** 2
    thorax = cavity & above
    lung = thorax & (q_apex < k_ap**2)

    # Mediastinum: a central column plus the heart; wider above the heart (great vessels).
    t_hc = 42 * h
    heart_c = np.array([-0.16 * d0["ac"], 0.12 * d0["bca"], t_hc])
    heart_semi = np.array([62, 47, 52]) * body.heart
    # Long axis from the base (right, posterior, superior) to the apex (left, anterior, inferior).
    heart_rot = _rot(2, np.radians(rng.uniform(-48, -32))) @ _rot(1, np.radians(rng.uniform(12, 28)))
    top_heart = t_hc + 40 * h
    wy = np.clip((vv - d["v_vb"]) / np.maximum(d["bca"] - d["v_vb"], 1), 0, 1)
    # Wide around the spine (aorta, oesophagus), thin behind the sternum (anterior junction).
    w_med = (7 + 21 * (1 - wy) ** 1.5) * s + 12 * s * (1 - wy) * smoothstep(t, top_heart - 20, top_heart + 10)
    column = (np.abs(u + 4 * s) < w_med) & (vv > d["v_vb"] - 0.3 * d["b_vb"])
    lung &= ~column
    hb, hq = ellipsoid_q(g, heart_c, heart_semi, heart_rot, pad=1.0)
    if hb is not None:
        lung[hb] &= ~(hq < 1.12)  # pericardial fat margin
    P.mat[thorax & ~lung] = MAT["fat"]
    # Thoracic inlet / lower neck: muscle with fat planes instead of mediastinal fat.
    nb = g.box((-1e4, -1e4, body.t_apex - 35 * h), (1e4, 1e4, 1e4))
    if nb is not None:
        neck = thorax[nb] & ~lung[nb]
        fat_planes = smooth_field(rng, neck.shape, g.spacing, 12.0) < -0.6
        P.paint(nb, neck & ~fat_planes, "muscle")
    P.mat[lung] = MAT["lung"]

    _heart_and_great_vessels(rng, P, body, d, d0, heart_c, heart_semi, heart_rot, above, t_hc)
    _abdomen(rng, P, body, d, d0, abdomen)
    _spine_and_ribs(rng, P, body, d)
    if rng.uniform() < 0.7:
        _table(rng, P, d)
    lung_m = P.mat == MAT["lung"]
    _lung_vessels(rng, P, body, lung_m)

    # HU lookup, lung density gradient (dependent lung is denser), organ texture.
    lut = np.array([hu_of[m] for m in MATERIALS], np.float32)
    hu = lut[P.mat]
    dep = np.clip((0.3 * d0["bca"] - v) / (d0["bca"] + d0["bcp"]), 0, 1) ** 2
    hu += np.where(lung_m, np.float32(hu_of["lung_gradient"]) * dep, np.float32(0))
    tex_amp = np.zeros(len(MATERIALS), np.float32)
    for name, amp in _TEXTURE.items():
        tex_amp[MAT[name]] = amp
    hu += tex_amp[P.mat] * smooth_field(rng, g.shape, g.spacing, 14.0)
    tissue = _MAT_TISSUE[P.mat]

    liver_m = P.mat == MAT["liver"]
    kidney_m = (P.mat == MAT["kidney_cortex"]) | (P.mat == MAT["kidney_medulla"])
    for box, frac, key, tis, within in P.soft:
        if within is not None:
            frac = frac * np.isin(P.mat[box], [MAT[n] for n in within])
        hv = hu[box]
        hv += frac * (np.float32(hu_of[key]) - hv)
        tissue[box][frac >= 0.5] = tis
    masks = dict(lung=lung_m, liver=liver_m, kidney=kidney_m, body=body_m)
    return Anatomy(hu=hu, tissue=tissue, masks=masks)


# ----------------------------------------------------------------------------- organs


def _circle_paint(P, centre_u, centre_v, ru, rv, t_lo, t_hi, name, where=None):
    """Paint a vertical tube whose centre (u, v) and radii may vary per slice (arrays over t)."""
    g = P.grid
    cu = np.atleast_1d(np.asarray(centre_u, np.float32))
    cv = np.atleast_1d(np.asarray(centre_v, np.float32))
    rmax = float(np.max(np.maximum(ru, rv)))
    box = g.box((cu.min() - rmax, cv.min() - rmax, t_lo), (cu.max() + rmax, cv.max() + rmax, t_hi))
    if box is None:
        return
    u, v, t = g.axes(box)

    def per_slice(x):
        x = np.asarray(x, np.float32)
        return x.reshape(1, 1, -1)[..., box[2]] if x.size == g.shape[2] else x

    m = ((u - per_slice(centre_u)) / per_slice(ru)) ** 2 + ((v - per_slice(centre_v)) / per_slice(rv)) ** 2 <= 1
    m = m & (t >= t_lo) & (t <= t_hi)
    if where is not None:
        m = m & np.isin(P.mat[box], [MAT[n] for n in where])
    P.paint(box, m, name)


def _local(grid, box, centre, rot):
    u, v, t = grid.axes(box)
    du, dv, dt = u - centre[0], v - centre[1], t - centre[2]
    return [rot[0, k] * du + rot[1, k] * dv + rot[2, k] * dt for k in range(3)]


def _heart_and_great_vessels(rng, P, body, d, d0, heart_c, heart_semi, heart_rot, above, t_hc):
    g, s, h = P.grid, body.s, body.h
    sl = lambda x: x.reshape(-1)  # noqa: E731 (per-slice parameter as 1-D array)
    t_all = sl(g.axes()[2])
    # Heart: myocardium shell, a septum, left (systemic) and right (venous) blood pools.
    hb, hq = ellipsoid_q(g, heart_c, heart_semi, heart_rot, pad=1.0)
    if hb is not None:
        heart = (hq <= 1) & above[hb]
        P.paint(hb, heart, "heart_wall")
        ly = _local(g, hb, heart_c + 3 * s * heart_rot[:, 1], heart_rot)
        q_in = sum((c / (sem * f)) ** 2 for c, sem, f in zip(ly, heart_semi, (0.74, 0.68, 0.72)))
        inner = heart & (q_in <= 1)
        septum = np.abs(ly[1] - 2 * s) < 4.5 * s
        P.paint(hb, inner & (ly[1] < 2 * s) & ~septum, "blood")
        P.paint(hb, inner & (ly[1] >= 2 * s) & ~septum, "blood_right")

    # Aorta: ascending and descending parts are vertical tubes, the arch is splatted.
    r_asc, r_desc = rng.uniform(12.5, 16) * s, rng.uniform(10, 12.5) * s
    t_arch = body.t_apex - rng.uniform(48, 62) * h
    u_asc, v_asc = 10 * s, 0.2 * d0["bca"]
    t_root = t_hc + 12 * h
    _circle_paint(P, u_asc, v_asc, r_asc, r_asc, t_root, t_arch, "blood")
    u_desc = sl(-19 * s + 12 * s * d["abd"])
    r_d = sl(r_desc * (1 - 0.18 * d["abd"]))
    v_desc = sl(d["v_vb"] + d["b_vb"]) + r_d + 2 * s
    _circle_paint(P, u_desc, v_desc, r_d, r_d, -1e4, t_arch, "blood")
    d_arch = {k: float(np.asarray(x).ravel()[0]) for k, x in body.at(np.array([t_arch])).items()}
    p_end = np.array([-19 * s, d_arch["v_vb"] + d_arch["b_vb"] + r_desc + 2 * s, t_arch])
    p_beg = np.array([u_asc, v_asc, t_arch])
    th = np.linspace(0, np.pi, 25)
    up = rng.uniform(16, 26) * h
    arch = p_beg + (p_end - p_beg) * ((1 - np.cos(th)) / 2)[:, None] + np.outer(np.sin(th), [0, 0, up])
    ra = np.interp(th[:-1], [0, np.pi], [r_asc, r_desc])
    step = 0.55 * min(g.spacing)
    P.overlay(splat(g, *tube_samples(arch[:-1], arch[1:], ra, step=step)), "blood", Tissue.BLOOD)
    # Supra-aortic branches run up from the arch top, diverging toward the shoulders.
    for frac, r, drift in ((0.3, 6.5, 0.25), (0.5, 4.5, 0.05), (0.72, 5.5, -0.2)):
        k = int(frac * 24)
        base = arch[k]
        cu = base[0] + drift * np.maximum(t_all - base[2], 0) * s
        _circle_paint(P, cu, np.full_like(cu, base[1]), r * s, r * s, base[2], 1e4, "blood")

    # Pulmonary trunk and arteries (venous blood), SVC, trachea, bronchi, oesophagus.
    w_hil = 38 * s
    t_hil = t_arch - rng.uniform(38, 48) * h
    hila = {1: np.array([w_hil, -0.05 * d0["bcp"], t_hil]), -1: np.array([-w_hil, -0.08 * d0["bcp"], t_hil + 8 * h])}
    rvot = np.array([-0.08 * d0["ac"], 0.3 * d0["bca"], t_hc + 22 * h])
    bif = np.array([-14 * s, v_asc - 16 * s, t_arch - 26 * h])
    pa0 = np.array([rvot, bif, bif])
    pa1 = np.array([bif, hila[1] + [-8 * s, 0, 0], hila[-1] + [8 * s, 0, 0]])
    P.overlay(splat(g, *tube_samples(pa0, pa1, np.array([13, 10, 9.5]) * s, step=step)), "blood_right", Tissue.BLOOD)
    la = heart_c + heart_rot @ (np.array([0.5, -0.35, 0.1]) * heart_semi)  # left atrium
    pv0 = np.array([hila[1] + [0, -8 * s, -22 * h], hila[-1] + [0, -8 * s, -22 * h]])
    P.overlay(splat(g, *tube_samples(pv0, np.array([la, la]), 6 * s, step=step)), "blood", Tissue.BLOOD)
    _circle_paint(P, 28 * s, v_asc - 6 * s, 9 * s, 9 * s, t_hc + 28 * h, 1e4, "blood_right")

    v_tr = sl(d["v_vb"] + d["b_vb"]) + 22 * s
    t_car = t_arch - 10 * h
    _circle_paint(P, 2 * s, v_tr, 11 * s, 10 * s, t_car, 1e4, "esophagus")
    _circle_paint(P, 2 * s, v_tr, 9 * s, 8 * s, t_car, 1e4, "airway")
    _circle_paint(
        P, -8 * s, sl(d["v_vb"] + d["b_vb"]) + 8 * s, 9 * s, 6 * s, -25 * h, 1e4, "esophagus", where=("fat", "muscle")
    )
    d_car = body.at(np.array([t_car]))
    carina = np.array([2 * s, float(d_car["v_vb"][0] + d_car["b_vb"][0]) + 22 * s, t_car])
    br_end = {1: hila[1] + [-2 * s, -12 * s, 12 * h], -1: hila[-1] + [2 * s, -12 * s, 6 * h]}
    b1 = np.array([br_end[1], br_end[-1]])
    b0 = np.array([carina, carina])
    P.overlay(splat(g, *tube_samples(b0, b1, 8.3 * s, step=step)), "airway_wall", Tissue.SOFT)
    P.overlay(splat(g, *tube_samples(b0, b1, 6.3 * s, step=step)), "airway", Tissue.AIRWAY)
    P.extra.update(hila=hila, bronchi=br_end)


def _lung_vessels(rng, P, body, lung_m):
    g, s, h = P.grid, body.s, body.h
    step = 0.55 * min(g.spacing)
    segs, air = [], []
    lung_idx = np.flatnonzero(lung_m)
    if len(lung_idx) == 0:
        return
    pick = np.array(np.unravel_index(rng.choice(lung_idx, 400), g.shape), float).T
    pick_mm = np.stack(
        [(pick[:, 0] - g.ic) * g.spacing[0], (pick[:, 1] - g.jc) * g.spacing[1], g.t0 + pick[:, 2] * g.spacing[2]], -1
    )
    for side in (1, -1):
        hil = P.extra["hila"][side]
        targets = pick_mm[pick_mm[:, 0] * side > 0]
        # Arteries leave the hilum, veins converge lower toward the left atrium. Each root
        # heads for a random point of this lung so that every lobe gets its share of vessels.
        for start, n, r0 in ((hil, 10, 4.2), (hil + [0, -8 * s, -22 * h], 7, 3.8)):
            tg = targets[:n]
            targets = targets[n:]
            if len(tg) == 0:
                continue
            st = start + np.outer(rng.uniform(-15, 15, len(tg)) * h, [0, 0, 1.0])
            dv = tg - st
            dist = np.linalg.norm(dv, axis=1, keepdims=True)
            dv = dv / np.maximum(dist, 1e-6)
            r = r0 * s * rng.uniform(0.8, 1.15, len(tg))
            roots = (st, dv, r, np.clip(0.35 * dist[:, 0], 12, 60))
            segs.append(
                grow_tree(
                    rng, g, lung_m, roots, r_min=0.5, decay_mm=90 * s, side_ratio=(0.45, 0.85), max_segments=12000
                )
            )
        # Bronchial tree: a few generations of air tubes with soft-tissue walls.
        b = P.extra["bronchi"][side]
        dv = np.array([(0.3, 0.2, 1.0), (0.8, 0.4, 0.0), (0.4, -0.5, -1.0)]) * [side, 1, 1]
        dv = dv + rng.normal(0, 0.12, dv.shape)
        dv /= np.linalg.norm(dv, axis=1, keepdims=True)
        r = np.full(3, 4.2 * s)
        air.append(
            grow_tree(rng, g, lung_m, (np.repeat(b[None], 3, 0), dv, r, r * 5), r_min=1.3, decay_mm=45 * s, p_side=0.7)
        )
    a0, a1, ar = (np.concatenate(x) for x in zip(*air))
    P.overlay(
        splat(g, *tube_samples(a0, a1, ar + 0.4 + 0.18 * ar, step=step)), "airway_wall", Tissue.SOFT, within=("lung",)
    )
    P.overlay(splat(g, *tube_samples(a0, a1, ar, step=step)), "airway", Tissue.AIRWAY, within=("lung",))
    if segs:
        p0, p1, r = (np.concatenate(x) for x in zip(*segs))
        P.overlay(splat(g, *tube_samples(p0, p1, r, step=step)), "lung_vessel", Tissue.VESSEL, within=("lung",))


def _abdomen(rng, P, body, d, d0, abdomen):
    g, s, h = P.grid, body.s, body.h
    sl = lambda x: x.reshape(-1)  # noqa: E731
    ac, bca, bcp = d0["ac"], d0["bca"], d0["bcp"]
    step = 0.55 * min(g.spacing)
    # Liver: union of a right-lobe and a left-lobe ellipsoid under the diaphragm, rough edges.
    lv = body.liver
    box = g.box((-0.75 * ac, -bcp, -200 * h), (ac, bca, 40 * h))
    if box is not None:
        u, v, t = g.axes(box)
        qr = (
            ((u - 0.45 * ac) / (0.56 * ac * lv)) ** 2
            + ((v + 0.05 * bcp) / (0.5 * (bca + bcp))) ** 2
            + ((t + 55 * h) / (95 * h * lv)) ** 2
        )
        ql = (
            ((u + 0.1 * ac) / (0.52 * ac * lv)) ** 2
            + ((v - 0.4 * bca) / (0.45 * bca)) ** 2
            + ((t + 35 * h) / (42 * h * lv)) ** 2
        )
        ls = tuple(b.stop - b.start for b in box)
        q = np.minimum(qr, ql) + 0.12 * smooth_field(rng, ls, g.spacing, 30.0)
        # Below the bare area the kidneys, not the liver, lie against the posterior wall.
        dd = {k: np.asarray(x, np.float32).reshape(1, 1, -1)[..., box[2]] for k, x in d.items()}
        v_lim = dd["v_vb"] + 5 * s - 300 * (1 - smoothstep(t, -40 * h, -70 * h))
        P.paint(box, (q < 1) & abdomen[box] & (v > v_lim), "liver")
    if rng.uniform() < 0.85:  # gallbladder under the liver
        gb, q = ellipsoid_q(g, (0.12 * ac, 0.3 * bca, -95 * h), np.array([14, 16, 32]) * s, _rot(0, np.radians(30)))
        if gb is not None:
            P.paint(gb, (q < 1) & abdomen[gb], "gallbladder")
    # Spleen, left posterior; stomach with an air-fluid level (air rises anteriorly when supine).
    sb, q = ellipsoid_q(
        g,
        (-0.62 * ac, -0.42 * bcp, -50 * h),
        np.array([22, 48, 52]) * s * body.spleen,
        _rot(2, np.radians(rng.uniform(25, 45))),
    )
    if sb is not None:
        P.paint(sb, (q < 1) & abdomen[sb], "spleen")
    fill = rng.uniform(0.7, 1.1)
    semi = np.array([42, 40, 50]) * s * fill * body.stomach
    c_st = np.array([-0.3 * ac, 0.18 * bca, -45 * h])
    stb, q = ellipsoid_q(g, c_st, semi)
    if stb is not None:
        free = abdomen[stb] & (P.mat[stb] == MAT["fat"])
        st = (q < 1) & free
        wall = st & (q > (1 - 5 * s / semi.min()) ** 2)
        _, v, _ = g.axes(stb)
        gas = st & ~wall & (v > c_st[1] + rng.uniform(-0.1, 0.6) * semi[1])
        P.paint(stb, st, "bowel_fluid")
        P.paint(stb, wall, "bowel_wall")
        P.paint(stb, gas, "gas")
    # Psoas muscles appear in the lumbar region beside the vertebral bodies.
    r_ps = sl(3 * s + 22 * s * smoothstep(d["t"], -90 * h, -200 * h))
    for side in (1, -1):
        cu = sl(side * (d["a_vb"] + 12 * s))
        _circle_paint(P, cu, sl(d["v_vb"] + 2 * s), r_ps, r_ps * 0.85, -1e4, -80 * h, "muscle", where=("fat", "muscle"))
    # Kidneys: rotated ellipsoids, hilum facing anteromedially; cortex, medulla, sinus fat.
    ks = rng.uniform(0.9, 1.1) * body.kidney
    for side, tk in ((1, -112 * h + body.kidney_shift), (-1, -98 * h + body.kidney_shift)):
        dk = {k: float(np.asarray(x).ravel()[0]) for k, x in body.at(np.array([tk])).items()}
        c = np.array([side * (dk["a_vb"] + 46 * s), dk["v_vb"] - 4 * s, tk])
        semi = np.array([24, 22, 52]) * s * ks
        rot = _rot(2, np.radians(150 if side == 1 else 30)) @ _rot(1, np.radians(-12))
        kb, q = ellipsoid_q(g, c, semi, rot)
        if kb is None:
            continue
        lx, _, lz = _local(g, kb, c, rot)
        kid = (q < 1) & ~((lx > 0.55 * semi[0]) & (np.abs(lz) < 0.35 * semi[2]))
        kid &= abdomen[kb] | (P.mat[kb] == MAT["muscle"])
        P.paint(kb, (q < 1.35) & abdomen[kb] & (P.mat[kb] != MAT["spleen"]), "fat")  # perirenal fat
        P.paint(kb, kid, "kidney_cortex")
        P.paint(kb, kid & (q < (1 - 6 * s / semi[1]) ** 2), "kidney_medulla")
        P.paint(kb, kid & (lx > 0.2 * semi[0]) & (q < 0.55), "sinus_fat")
    # IVC (intrahepatic part included), portal vein and hepatic vessel trees.
    v_ivc = sl(d["v_vb"] + d["b_vb"]) + 12 * s
    _circle_paint(P, 22 * s, v_ivc, 13 * s, 10 * s, -1e4, 10 * h, "ivc", where=("fat", "liver", "muscle"))
    tk = -95 * h
    dk = {k: float(np.asarray(x).ravel()[0]) for k, x in body.at(np.array([tk])).items()}
    conf = np.array([4 * s, dk["v_vb"] + dk["b_vb"] + 40 * s, tk])
    porta = np.array([0.22 * ac, 0.02 * bca, -70 * h])
    P.overlay(splat(g, *tube_samples(conf, porta, 7 * s, step=step)), "portal", Tissue.VESSEL, within=("fat", "liver"))
    liver_m = P.mat == MAT["liver"]
    d_ivc = body.at(np.array([-15 * h]))
    ivc_top = np.array([22 * s, float(d_ivc["v_vb"][0] + d_ivc["b_vb"][0]) + 12 * s, -15 * h])
    for start, dirs, name in (
        (porta, [(1, -0.3, 0.4), (0.6, -0.8, 0.5), (-1, 0.6, 0.4), (0.5, 0.6, 0.6)], "portal"),
        (ivc_top, [(1, 0.3, -0.4), (0.2, 1, -0.4), (-0.8, 0.8, -0.3)], "hepatic"),
    ):
        dv = np.array(dirs, float) + rng.normal(0, 0.15, (len(dirs), 3))
        dv /= np.linalg.norm(dv, axis=1, keepdims=True)
        r = np.full(len(dirs), 4.5 * s)
        p0, p1, rr = grow_tree(
            rng,
            g,
            liver_m,
            (np.repeat(start[None], len(dirs), 0), dv, r, r * 6),
            r_min=0.9,
            decay_mm=40 * s,
            p_side=0.5,
            outward=0.4,
        )
        P.overlay(splat(g, *tube_samples(p0, p1, rr, step=step)), name, Tissue.VESSEL, within=("liver",))
    # Bowel loops fill the free lower abdomen: smooth-field blobs with walls, fluid and gas.
    bb = g.box((-ac, -bcp, -400 * h), (ac, 1.5 * bca, -40 * h))
    if bb is not None:
        ls = tuple(b.stop - b.start for b in bb)
        _, _, t = g.axes(bb)
        free = abdomen[bb] & (P.mat[bb] == MAT["fat"])
        f1 = smooth_field(rng, ls, g.spacing, 22.0)
        f2 = smooth_field(rng, ls, g.spacing, 12.0)
        thr = 0.1 + 1.8 * smoothstep(t, -85 * h, -40 * h)
        bowel = free & (f1 > thr)
        wall = bowel & (f1 < thr + 0.25)
        P.paint(bb, bowel, "bowel_fluid")
        P.paint(bb, wall, "bowel_wall")
        P.paint(bb, bowel & ~wall & (f2 > 0.7), "gas")


def _spine_and_ribs(rng, P, body, d):
    g, s, h = P.grid, body.s, body.h
    H = rng.uniform(23, 28) * h
    disc0 = 4.5 * s
    t_t1 = body.t_apex + rng.uniform(0, 15) * h  # centre of T1
    phase = t_t1 - (H + disc0) / 2
    box = g.box(
        (-75 * s, float(np.min(d["v_canal"])) - 50 * s, -1e4), (75 * s, float(np.max(d["v_vb"] + d["b_vb"])) + 5, 1e4)
    )
    if box is not None:
        u, v, t = g.axes(box)
        dd = {k: np.asarray(x, np.float32).reshape(1, 1, -1)[..., box[2]] for k, x in d.items()}
        pos = np.mod(t - phase, H)
        disc_h = disc0 + 3 * s * dd["abd"]
        is_disc = pos < disc_h
        endplate = (pos < disc_h + 1.2) | (pos > H - 1.2)
        qvb = (u / dd["a_vb"]) ** 2 + ((v - dd["v_vb"]) / dd["b_vb"]) ** 2
        vb = qvb <= 1
        shell = qvb > (1 - 1.8 / dd["b_vb"]) ** 2
        rc = dd["r_canal"]
        rr = np.sqrt(u**2 + (v - dd["v_canal"]) ** 2)
        in_arch = (pos > disc_h + 1) & (pos < H - 2)
        ring = (rr > rc) & (rr <= rc + 5 * s) & (v < dd["v_canal"] + 2 * s)
        pedicle = (
            (np.abs(u) > rc - 1) & (np.abs(u) < rc + 5 * s) & (v >= dd["v_canal"]) & (v <= dd["v_vb"] - dd["b_vb"] + 1)
        )
        spinous = (
            (np.abs(u) < 4 * s)
            & (v < dd["v_canal"] - rc)
            & (v > dd["v_canal"] - rc - 32 * s)
            & (pos > disc_h + 3)
            & (pos < H - 3)
        )
        transverse = (
            (np.abs(v - dd["v_canal"] - s) < 5 * s)
            & (np.abs(u) > rc)
            & (np.abs(u) < rc + (22 + 8 * dd["abd"]) * s)
            & (pos > disc_h + 2)
            & (pos < disc_h + 12 * s)
        )
        P.paint(box, vb & is_disc, "disc")
        P.paint(box, vb & ~is_disc, "bone_marrow")
        P.paint(box, vb & ~is_disc & (shell | endplate), "bone_cortex")
        P.paint(box, ((ring | pedicle) & in_arch) | spinous | transverse, "bone_arch")
        P.paint(box, rr <= rc, "csf")

    # Ribs: curves along the chest wall from the transverse process, descending anteriorly.
    step = 0.55 * min(g.spacing)
    r0, r1, rra, rrb, c0, c1 = [], [], [], [], [], []
    t_st_top = t_t1 - 2.2 * H
    t_st_bot = t_st_top - rng.uniform(150, 185) * h
    for j in range(1, 13):
        tj = t_t1 - (j - 1) * H
        drop = min(40 + 8 * j, 115) * h  # the anterior end lies 2-4 levels below the head
        if tj + 20 < g.t0 or tj - drop - 30 > g.t0 + g.shape[2] * g.spacing[2]:
            continue
        dj0 = {k: float(np.asarray(x).ravel()[0]) for k, x in body.at(np.array([tj])).items()}
        phi0 = float(np.arcsin(min(58 * s / (dj0["ac"] + 6 * s), 0.9)))  # the rib angle
        phi_end = {11: 0.62 * np.pi, 12: 0.48 * np.pi}.get(j, np.pi * (0.8 if j < 8 else 0.74))
        phi = np.linspace(phi0, phi_end, 40)
        tt = tj - drop * ((phi - phi0) / (np.pi - phi0)) ** 1.6
        dj = body.at(tt)
        for side in (1, -1):
            A = dj["ac"] + 6 * s
            B = np.where(np.cos(phi) > 0, dj["bcp"], dj["bca"]) + 6 * s
            pts = np.stack([side * A * np.sin(phi), -B * np.cos(phi), tt], -1)
            # Head at the vertebral body, tubercle at the transverse process tip, then the curve.
            head = [side * (dj0["a_vb"] + 2 * s), dj0["v_vb"] - 0.6 * dj0["b_vb"], tj + 3 * h]
            tub = [side * (dj0["r_canal"] + 20 * s), dj0["v_canal"] + 1 * s, tj + 2 * h]
            pts = np.concatenate([np.array([head, tub]), pts])
            r0.append(pts[:-1]), r1.append(pts[1:])
            thick = 2.6 if j == 1 else 3.0
            rra.append(np.full(len(pts) - 1, thick * s)), rrb.append(np.full(len(pts) - 1, 5.0 * s))
            if j <= 10:  # costal cartilage to the sternum or the costal margin
                end = pts[-1]
                if j <= 7:
                    tc = t_st_top - (j - 1) / 7 * (t_st_top - t_st_bot) * 0.9
                    dc = body.at(np.array([tc]))
                    tgt = np.array([side * 13 * s, float(dc["bca"][0]) + 6 * s, tc])
                else:
                    tgt = end + np.array([-side * 30 * s, 15 * s, 28 * h])
                mid = (end + tgt) / 2 + [0, 4 * s, 0]
                c0.append(np.array([end, mid])), c1.append(np.array([mid, tgt]))
    if r0:
        P.overlay(
            splat(
                g,
                *tube_samples(
                    np.concatenate(r0),
                    np.concatenate(r1),
                    np.concatenate(rra),
                    np.concatenate(rrb),
                    up=np.array([0.0, 0, 1]),
                    step=step,
                ),
            ),
            "rib",
            Tissue.BONE,
        )
    if c0:
        P.overlay(
            splat(g, *tube_samples(np.concatenate(c0), np.concatenate(c1), 4.2 * s, step=step)),
            "cartilage",
            Tissue.SOFT,
        )
    # Sternum in the anterior chest wall: wide manubrium, narrow body, thin xiphoid.
    box = g.box((-30 * s, float(np.min(d["bca"])) - 5, t_st_bot), (30 * s, float(np.max(d["bca"])) + 25 * s, t_st_top))
    if box is not None:
        u, v, t = g.axes(box)
        rel = (t - t_st_bot) / (t_st_top - t_st_bot)
        w = np.where(rel > 0.8, 24 * s, np.where(rel > 0.15, 14 * s, 8 * s))
        v_st = np.asarray(d["bca"], np.float32).reshape(1, 1, -1)[..., box[2]] + 9 * s
        m = (np.abs(u) < w) & (np.abs(v - v_st) < 6 * s) & (rel >= 0) & (rel <= 1)
        core = (np.abs(u) < w - 1.6) & (np.abs(v - v_st) < 4.4 * s)
        P.paint(box, m, "bone_cortex")
        P.paint(box, m & core, "bone_marrow")


def _table(rng, P, d):
    g = P.grid
    y_top = float(np.min(-d["b_post"])) - rng.uniform(0, 10)
    curve = rng.uniform(0, 0.0015)
    pad = rng.uniform(0, 18)
    box = g.box((-230, y_top - 60, -1e4), (230, y_top + 40, 1e4))
    if box is None:
        return
    u, v, _ = g.axes(box)
    depth = np.broadcast_to((y_top + curve * u**2) - v, P.mat[box].shape)
    air = P.mat[box] == MAT["air"]
    edge = np.abs(u) < 220
    shell = ((depth > pad) & (depth < pad + 3)) | ((depth > pad + 32) & (depth < pad + 35))
    foam = ((depth > 0) & (depth <= pad)) | ((depth >= pad + 3) & (depth <= pad + 32))
    P.paint(box, air & edge & foam, "table_foam")
    P.paint(box, air & edge & shell, "table")
