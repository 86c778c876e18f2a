"""Synthetic chest/upper-abdomen CT phantoms with lesions, and the synthetic data set writer.

:func:`make_phantom` draws one patient (anatomy from :mod:`.anatomy`, a contrast
protocol, grid size and spacing, field of view), inserts lesions with ground-truth masks, then
applies partial-volume blur and correlated noise. Everything derives from the seed through
independent random streams, so a phantom with and without lesions shares anatomy and noise.

Two families: ``standard`` (the demo's, the tests' and the quality benchmark's dev set) and
``shifted``, a held-out family for testing what was tuned on the standard one: organ masses
15-60 HU above or below their host tissue, lesions 4-40 mm across, slices 1-5 mm thick, noise
8-30 HU, organs of other sizes and positions, per-patient tissue offsets and a fourth (delayed)
contrast phase.

:func:`make_synthetic_dataset` writes ``train/`` (unlabeled; about a quarter of the cases
carry unlabeled lesions, as real archives do) and ``test/images`` + ``test/labels`` (every
case has at least one lesion), plus ``dataset.json``. This is the default data set for the
demo, the tests and the quality benchmark.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from screener_plans.errors import ScreenerError
from screener_plans.options import as_number
from screener_plans.synthetic.anatomy import Grid, Tissue, build_anatomy, sample_body, smooth_field

TISSUE_CLASSES = {int(t): t.name.lower() for t in Tissue}
LESION_KINDS = ("lung_nodule", "ground_glass", "liver_mass", "kidney_mass")
PROTOCOLS = ("plain", "arterial", "venous", "delayed")
FAMILIES = ("standard", "shifted")
_KIND_ORGAN = {"lung_nodule": "lung", "ground_glass": "lung", "liver_mass": "liver", "kidney_mass": "kidney"}
_KIND_WEIGHT = {"lung_nodule": 0.35, "ground_glass": 0.2, "liver_mass": 0.3, "kidney_mass": 0.15}
_RADIUS_MM = {"lung_nodule": (3, 12), "ground_glass": (8, 25), "liver_mass": (6, 25), "kidney_mass": (5, 15)}
_EDGE_MM = {"lung_nodule": 0.4, "ground_glass": 2.5, "liver_mass": 0.8, "kidney_mass": 0.6}
_MIN_FIT = {"lung_nodule": 0.75, "ground_glass": 0.85, "liver_mass": 0.95, "kidney_mass": 0.8}
_MIN_ORGAN_ML = {"lung": 60.0, "liver": 80.0, "kidney": 20.0}
# The shifted family: every kind 4-40 mm across (radius 2-20 mm, fewer large ones where the organ is
# thin), softer or sharper edges.
_SHIFTED_RADIUS_MM = {"lung_nodule": (2, 15), "ground_glass": (4, 20), "liver_mass": (2, 20), "kidney_mass": (2, 20)}
_SHIFTED_EDGE_MM = (0.3, 1.8)
# Soft tissues whose HU a patient shifts in the shifted family (contrast timing, body habitus).
_SHIFTED_OFFSET_KEYS = (
    "muscle",
    "liver",
    "spleen",
    "kidney_cortex",
    "kidney_medulla",
    "blood",
    "blood_right",
    "ivc",
    "portal",
    "hepatic",
    "heart_wall",
    "bowel_wall",
    "lung_vessel",
)
HU_MIN, HU_MAX = -1024, 3071
# the mark of a data folder this generator wrote (its module's first name, kept so that folders made
# before the move to screener_plans.synthetic are still recognised)
GENERATOR = "screener_plans.data.synthetic"


@dataclass
class Phantom:
    """One synthetic CT case; arrays are (X, Y, Z) in RAS voxel order."""

    hu: np.ndarray  # int16 HU, air = -1000, clipped to [-1024, 3071]
    spacing: tuple  # mm (X, Y, Z)
    affine: np.ndarray  # 4x4 voxel -> RAS mm
    lesion_mask: np.ndarray  # uint8, 1 = lesion
    lesion_kinds: list  # kind of lesion k (instance id k + 1)
    tissue: np.ndarray  # uint8 Tissue classes (see TISSUE_CLASSES)
    lesion_instances: np.ndarray = None  # uint8, 0 background, k + 1 = lesion k
    lesions: list = field(default_factory=list)  # per lesion: kind, centre_mm, radius_mm, hu, voxels
    protocol: str = "plain"
    seed: int = 0


# ----------------------------------------------------------------------------- case sampling


def _sample_hu(rng, protocol, family="standard"):
    """HU of every material for one patient under a contrast protocol."""
    U = rng.uniform
    fat = U(-112, -88)
    hu = dict(
        air=-1000.0,
        fat_sc=fat,
        fat=fat + U(-4, 10),
        skin=U(10, 40),
        muscle=U(42, 56),
        lung=U(-915, -875),
        lung_gradient=U(10, 50),
        esophagus=U(35, 50),
        disc=U(70, 100),
        csf=U(5, 20),
        gallbladder=U(0, 20),
        bowel_fluid=U(0, 30),
        gas=-1000.0,
        airway=-1000.0,
        airway_wall=U(10, 50),
        table=U(150, 400),
        table_foam=U(-960, -880),
        bone_cortex=U(900, 1300),
        bone_marrow=U(250, 400),
        bone_arch=U(550, 850),
        rib=U(400, 650),
        cartilage=U(60, 180),
        sinus_fat=fat + U(0, 20),
    )
    if protocol == "plain":
        blood = U(36, 48)
        hu.update(
            blood=blood,
            blood_right=blood,
            ivc=blood,
            heart_wall=U(40, 52),
            liver=U(52, 66),
            kidney_cortex=U(28, 40),
            spleen=U(42, 52),
            bowel_wall=U(35, 45),
        )
        hu.update(kidney_medulla=hu["kidney_cortex"], portal=blood, hepatic=blood, lung_vessel=blood)
    elif protocol == "arterial":
        hu.update(
            blood=U(200, 320),
            blood_right=U(100, 200),
            ivc=U(60, 100),
            heart_wall=U(90, 115),
            liver=U(62, 76),
            kidney_cortex=U(150, 210),
            kidney_medulla=U(70, 100),
            spleen=U(90, 130),
            bowel_wall=U(60, 90),
            portal=U(100, 140),
            hepatic=U(50, 70),
        )
        hu["lung_vessel"] = 0.5 * (hu["blood"] + hu["blood_right"])
    elif protocol == "venous":
        blood = U(130, 170)
        hu.update(
            blood=blood,
            blood_right=blood + U(-10, 10),
            ivc=U(120, 160),
            heart_wall=U(90, 115),
            liver=U(95, 115),
            kidney_cortex=U(150, 190),
            kidney_medulla=U(140, 180),
            spleen=U(105, 125),
            bowel_wall=U(70, 100),
            portal=U(150, 190),
            hepatic=U(130, 170),
            lung_vessel=blood,
        )
    else:  # delayed (a few minutes): contrast washed out of the vessels, kidneys dense throughout
        blood = U(85, 120)
        hu.update(
            blood=blood,
            blood_right=blood,
            ivc=blood + U(-5, 5),
            heart_wall=U(75, 95),
            liver=U(75, 95),
            kidney_cortex=U(130, 180),
            spleen=U(80, 100),
            bowel_wall=U(55, 80),
            portal=blood + U(-5, 5),
            hepatic=blood + U(-5, 5),
            lung_vessel=blood,
        )
        hu["kidney_medulla"] = hu["kidney_cortex"] + U(-10, 25)
    if family == "shifted":
        for key in _SHIFTED_OFFSET_KEYS:
            hu[key] += U(-8, 8)
    return {k: float(v) for k, v in hu.items()}


def _check_shape_spacing(shape, spacing):
    if shape is not None:
        if len(shape) != 3 or any(int(n) != n or n < 16 for n in shape):
            raise ScreenerError(f"make_phantom: shape must be three integers >= 16, got {shape!r}")
    if spacing is not None:
        if len(spacing) != 3 or any(not np.isfinite(x) or x <= 0 for x in spacing):
            raise ScreenerError(f"make_phantom: spacing must be three positive mm values, got {spacing!r}")


def _sample_case(rng, shape, spacing, family="standard"):
    """Grid, body and field of view (scan range along the body) of one case."""
    dz = float(spacing[2]) if spacing is not None else rng.uniform(2.0, 3.5)
    nz = int(shape[2]) if shape is not None else int(rng.integers(56, 111))
    dx = float(spacing[0]) if spacing is not None else rng.uniform(1.6, 2.2)
    if family == "shifted" and spacing is None:
        # Slices 1-5 mm thick (log-uniform) over 150-380 mm, at most 200 of them; finer pixels.
        dz = float(np.exp(rng.uniform(np.log(1.0), np.log(5.0))))
        if shape is None:
            nz = int(np.clip(rng.uniform(150, 380) / dz, 48, 200))
        dx = rng.uniform(1.2, 1.9)
    dy = float(spacing[1]) if spacing is not None else dx
    if shape is not None:
        nx, ny = int(shape[0]), int(shape[1])
        body = sample_body(rng, max_half_width=min(nx * dx, 1.25 * ny * dy) / 2 - 8)
    else:  # the grid is sized to the body below (at most 512 voxels across)
        body = sample_body(rng, max_half_width=None if spacing is None else 512 * dx / 2 - 12)
    # Scan range: mostly chest, chest + upper abdomen, or upper abdomen with the lung bases.
    length = nz * dz
    mode = rng.choice(3, p=[0.35, 0.45, 0.2])
    top = [body.t_apex + rng.uniform(10, 40), body.t_apex - rng.uniform(0, 60), rng.uniform(40, 110) * body.h][mode]
    top = min(max(top, -260 * body.h + length), body.t_apex + 40)
    t0 = top - (nz - 1) * dz
    prof = body.at(t0 + np.arange(nz) * dz)
    half_w = float(prof["a"].max())
    ap = float(prof["b_ant"].max() + prof["b_post"].max()) + 45  # + table
    if shape is None:
        need = max(2 * half_w * 1.06 + 20, ap + 20)
        if spacing is None:
            n_max = 224 if family == "standard" else 320
            n = int(np.clip(np.ceil(need / dx) + rng.integers(0, 20), 160, n_max))
            dx = dy = max(dx, need / n)
        else:
            n = int(min(np.ceil(need / min(dx, dy)) + rng.integers(0, 20), 512))
        nx = ny = n
    fov_y = ny * dy
    ic = (nx - 1) / 2 + rng.uniform(-0.03, 0.03) * nx
    # Centre the body + table extent in Y, with some jitter.
    v_mid = (float(prof["b_ant"].max()) - float(prof["b_post"].max()) - 45) / 2
    jc = (ny - 1) / 2 - v_mid / dy + rng.uniform(-0.03, 0.03) * fov_y / dy
    grid = Grid(shape=(nx, ny, nz), spacing=(dx, dy, dz), ic=ic, jc=jc, t0=t0)
    return grid, body


def _affine(rng, grid):
    dx, dy, dz = grid.spacing
    nx, ny, _ = grid.shape
    aff = np.diag([dx, dy, dz, 1.0])
    aff[:3, 3] = [
        -(nx - 1) / 2 * dx + rng.uniform(-15, 15),
        -(ny - 1) / 2 * dy + rng.uniform(-15, 15),
        rng.uniform(-700, -100),
    ]
    return aff


# ----------------------------------------------------------------------------- lesions


def _lesion_profile(rng, box_coords, radius, edge, lobulation):
    """Soft lesion occupancy in [0, 1]: a sigmoid edge around a lobulated sphere."""
    du, dv, dt = box_coords
    dist = np.sqrt(du**2 + dv**2 + dt**2) + 1e-6
    r_eff = np.float32(radius)
    if lobulation > 0:
        bumps = rng.normal(size=(4, 3))
        bumps /= np.linalg.norm(bumps, axis=1, keepdims=True)
        amp = rng.uniform(-0.5, 1.0, 4) * lobulation
        cosang = [(b[0] * du + b[1] * dv + b[2] * dt) / dist for b in bumps]
        r_eff = radius * (1 + sum(a * np.exp(3.0 * (c - 1)) for a, c in zip(amp, cosang)))
    return 1.0 / (1.0 + np.exp(-(r_eff - dist) / edge)), dist, r_eff


_HOST_TISSUE = {"liver_mass": "liver", "kidney_mass": "kidney_cortex"}


def _lesion_hu(rng, kind, hu_of, protocol, family="standard"):
    if family == "shifted":
        if kind == "lung_nodule":  # solid to part-solid
            return rng.uniform(-150, 60) + (0 if protocol == "plain" else rng.uniform(0, 30))
        if kind == "ground_glass":
            return rng.uniform(-750, -300)
        return hu_of[_HOST_TISSUE[kind]] + rng.choice([-1, 1]) * rng.uniform(15, 60)  # hypo- or hyperdense
    if kind == "lung_nodule":
        return rng.uniform(10, 50) + (0 if protocol == "plain" else rng.uniform(10, 30))
    if kind == "ground_glass":
        return rng.uniform(-650, -350)
    if kind == "liver_mass":
        sign = -1 if rng.uniform() < 0.7 else 1
        return hu_of["liver"] + sign * rng.uniform(30, 60)
    if rng.uniform() < 0.4:  # renal cyst
        return rng.uniform(0, 20)
    if protocol == "plain":
        return hu_of["kidney_cortex"] + rng.choice([-1, 1]) * rng.uniform(15, 35)
    return rng.uniform(60, 110)


def _find_site(rng, kind, radius, cand, organ_mask, inst, spacing, lo, edge):
    """A lesion centre whose sphere lies (mostly) in the organ and clear of other lesions."""
    shape = organ_mask.shape
    for attempt in range(60):
        if attempt and attempt % 15 == 0:  # crowded or thin organ: try smaller lesions
            radius = max(lo, radius * 0.75)
        c = np.array(np.unravel_index(rng.choice(cand), shape))
        half = np.ceil((radius * 1.5 + 4 * edge) / spacing).astype(int)
        box = tuple(slice(max(ci - hh, 0), min(ci + hh + 1, n)) for ci, hh, n in zip(c, half, shape))
        coords = [(np.arange(b.start, b.stop) - ci) * sp for b, ci, sp in zip(box, c, spacing)]
        coords = (coords[0][:, None, None], coords[1][None, :, None], coords[2][None, None, :])
        dist = np.sqrt(sum(x**2 for x in coords))
        core = dist <= 0.9 * radius
        if core.sum() == 0 or organ_mask[box][core].mean() < _MIN_FIT[kind]:
            continue
        if inst[box][dist <= radius + 4].any():
            continue
        return c, box, coords, radius
    return None


def _insert_lesions(rng, n, grid, hu, tissue, masks, hu_of, protocol, family="standard"):
    """Paint ``n`` lesions into organs present in the field of view (in place).

    Returns (instance map, per-lesion info). The ground truth is the lesion's soft occupancy
    at half maximum, so it matches the visible edge after the partial-volume blur.
    """
    vox_ml = float(np.prod(grid.spacing)) / 1000.0
    inst = np.zeros(grid.shape, np.uint8)
    kinds = [k for k in LESION_KINDS if masks[_KIND_ORGAN[k]].sum() * vox_ml >= _MIN_ORGAN_ML[_KIND_ORGAN[k]]]
    info, cand = [], {}
    for _ in range(n):
        if not kinds:
            break
        w = np.array([_KIND_WEIGHT[k] for k in kinds])
        kind = kinds[rng.choice(len(kinds), p=w / w.sum())]
        organ = _KIND_ORGAN[kind]
        if organ not in cand:
            allowed = masks[organ]
            if organ == "lung":  # centre in parenchyma, not in a vessel or airway
                allowed = allowed & (tissue == Tissue.LUNG)
            cand[organ] = np.flatnonzero(allowed)
        if len(cand[organ]) == 0:
            kinds.remove(kind)
            continue
        lo, hi = (_RADIUS_MM if family == "standard" else _SHIFTED_RADIUS_MM)[kind]
        radius = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))  # small lesions are common
        edge = _EDGE_MM[kind]
        if family == "shifted" and kind != "ground_glass":
            edge = float(rng.uniform(*_SHIFTED_EDGE_MM))
        site = _find_site(rng, kind, radius, cand[organ], masks[organ], inst, np.array(grid.spacing), lo, edge)
        if site is None:
            continue
        c, box, coords, radius = site
        lob = {"lung_nodule": 0.25, "ground_glass": 0.15}.get(kind, 0.1)
        if family == "shifted":
            lob = float(rng.uniform(0.0, 0.35))
        f, dist, r_eff = _lesion_profile(rng, coords, radius, edge, lob)
        f = (f * masks[organ][box]).astype(np.float32)  # never outside its organ
        m = (f >= 0.5) & (inst[box] == 0)
        if not m.any():
            continue
        value = _lesion_hu(rng, kind, hu_of, protocol, family)
        ls = tuple(b.stop - b.start for b in box)
        tex = smooth_field(rng, ls, grid.spacing, 4.0 if kind == "ground_glass" else 6.0)
        level = value + tex * (25.0 if kind == "ground_glass" else 6.0)
        if kind == "liver_mass" and radius > 15 and rng.uniform() < 0.35:
            level = level - 25.0 * (dist < 0.5 * r_eff)  # necrotic centre
        hv = hu[box]
        new = hv + f * (level - hv)
        # Ground glass raises the parenchyma but leaves the vessels running through it visible.
        hu[box] = np.maximum(hv, new) if kind == "ground_glass" else new
        inst[box][m] = len(info) + 1
        tissue[box][m] = Tissue.LESION
        info.append(
            dict(
                kind=kind,
                radius_mm=round(radius, 2),
                hu=round(float(value), 1),
                voxels=int(m.sum()),
                centre_vox=[int(x) for x in c],
            )
        )
        if family == "shifted" and kind in _HOST_TISSUE:  # the contrast is drawn against this value
            info[-1]["host_hu"] = round(hu_of[_HOST_TISSUE[kind]], 1)
    return inst, info


# ----------------------------------------------------------------------------- phantom


def _blur_and_noise(rng, hu, noise_sd):
    """Partial-volume blur plus correlated noise in one Gaussian pass.

    White noise is added before the blur, so the noise is correlated with the same kernel as
    the point-spread function (as CT reconstruction kernels do); its amplitude is scaled so
    the *smoothed* noise has standard deviation ``noise_sd``.
    """
    sig = np.array([rng.uniform(0.55, 1.0)] * 2 + [rng.uniform(0.45, 0.8)])
    gain = 1.0
    for s_ in sig:
        r = int(4.0 * s_ + 0.5)
        k = np.exp(-0.5 * (np.arange(-r, r + 1) / s_) ** 2)
        gain *= np.sqrt(np.sum((k / k.sum()) ** 2))
    white = rng.standard_normal(hu.shape, dtype=np.float32)
    white *= np.float32(noise_sd / gain)
    white += hu
    return ndimage.gaussian_filter(white, sig, mode="nearest", truncate=4.0)


def make_phantom(seed: int, lesions=True, shape=None, spacing=None, protocol=None, family: str = "standard") -> Phantom:
    """Synthetic CT of one patient; same seed (and family) -> identical arrays.

    ``lesions``: True for 1-4 random lesions, False/0 for none, an int for that many (fewer if
    the organs in the field of view cannot hold them). Anatomy and noise do not depend on it.
    ``shape``/``spacing`` (X, Y, Z) override the random grid; the body is scaled down to fit a
    small field of view. ``protocol`` forces "plain", "arterial", "venous" or "delayed" contrast
    (the standard family draws only the first three). ``family``: "standard" or "shifted" (see
    the module docstring).
    """
    if family not in FAMILIES:
        raise ScreenerError(f"make_phantom: family must be one of {FAMILIES}, got {family!r}")
    _check_shape_spacing(shape, spacing)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ScreenerError(f"make_phantom: seed must be a non-negative integer, got {seed!r}")
    if protocol is not None and protocol not in PROTOCOLS:
        raise ScreenerError(f"make_phantom: protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if not isinstance(lesions, bool) and (not isinstance(lesions, (int, np.integer)) or lesions < 0):
        raise ScreenerError(f"make_phantom: lesions must be True/False or a count >= 0, got {lesions!r}")
    # Independent streams: lesions, noise and tissue HU never shift the anatomy's draws.
    geo, lesion_ss, noise_ss, hu_ss, shift_ss = np.random.SeedSequence(int(seed)).spawn(5)
    rng = np.random.default_rng(geo)
    grid, body = _sample_case(rng, shape, spacing, family)
    drawn = PROTOCOLS[rng.choice(3, p=[0.45, 0.2, 0.35])]
    noise_range = (10, 25)
    if family == "shifted":
        srng = np.random.default_rng(shift_ss)
        drawn = PROTOCOLS[srng.choice(4, p=[0.3, 0.2, 0.3, 0.2])]
        noise_range = (8, 30)
        body = replace(
            body,
            liver=body.liver * srng.uniform(0.85, 1.2),
            heart=body.heart * srng.uniform(0.88, 1.15),
            spleen=srng.uniform(0.7, 1.4),
            kidney=srng.uniform(0.8, 1.25),
            kidney_shift=srng.uniform(-20, 20) * body.h,
            stomach=srng.uniform(0.7, 1.25),
        )
    protocol = protocol or drawn
    hu_of = _sample_hu(np.random.default_rng(hu_ss), protocol, family)
    affine = _affine(rng, grid)
    noise_sd = rng.uniform(*noise_range)
    anat = build_anatomy(rng, grid, body, hu_of)

    lrng = np.random.default_rng(lesion_ss)
    n = int(lrng.integers(1, 5)) if lesions is True else int(lesions)
    inst, info = _insert_lesions(lrng, n, grid, anat.hu, anat.tissue, anat.masks, hu_of, protocol, family)
    for les in info:
        centre = affine[:3, :3] @ les.pop("centre_vox") + affine[:3, 3]
        les["centre_mm"] = [round(float(x), 1) for x in centre]

    img = _blur_and_noise(np.random.default_rng(noise_ss), anat.hu, noise_sd)
    hu = np.clip(np.rint(img), HU_MIN, HU_MAX).astype(np.int16)
    return Phantom(
        hu=hu,
        spacing=tuple(float(x) for x in grid.spacing),
        affine=affine,
        lesion_mask=(inst > 0).astype(np.uint8),
        lesion_kinds=[x["kind"] for x in info],
        tissue=anat.tissue,
        lesion_instances=inst,
        lesions=info,
        protocol=protocol,
        seed=int(seed),
    )


# ----------------------------------------------------------------------------- data set writer


def _save_nifti(arr, affine, path: Path):
    """Write a NIfTI atomically (temp file in the same folder, then os.replace)."""
    import nibabel as nib

    img = nib.Nifti1Image(arr, affine)
    img.set_data_dtype(arr.dtype)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    tmp = path.with_name(f".{path.name[:-7]}.{os.getpid()}.tmp.nii.gz")
    try:
        nib.save(img, str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_json(obj, path: Path):
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _case_seed(seed, split, index):
    return int(np.random.SeedSequence([int(seed), split, int(index)]).generate_state(1)[0])


_CASE_FILE = re.compile(r"\.?case_\d{4,}(\.\d+\.tmp)?\.nii\.gz")
_JSON_TMP = re.compile(r"\.dataset\.json\.\d+\.tmp")
_SUBDIRS = ("train", "test/images", "test/labels")


def _is_ours(out: Path) -> bool:
    """A finished synthetic data set, or the remains of an interrupted run of this writer."""
    try:
        if json.loads((out / "dataset.json").read_text()).get("generator") == GENERATOR:
            return True
    except (OSError, ValueError, AttributeError):
        pass
    if (out / "dataset.json").exists():  # someone else's data set description
        return False
    for f in out.rglob("*"):
        rel = f.relative_to(out).as_posix()
        if f.is_dir():
            if rel not in ("train", "test", *_SUBDIRS):
                return False
        elif f.parent == out:
            if not _JSON_TMP.fullmatch(f.name):
                return False
        elif f.parent.relative_to(out).as_posix() not in _SUBDIRS or not _CASE_FILE.fullmatch(f.name):
            return False
    return True


def _finished_set(out: Path) -> dict | None:
    """``dataset.json`` of a finished synthetic data set in ``out``, or None."""
    try:
        meta = json.loads((out / "dataset.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("generator") == GENERATOR else None


def _same_request(meta: dict, seed: int, n_train: int, n_test: int, shape, spacing, family: str = "standard") -> bool:
    """Whether a finished data set is what this call would write (then it is kept as it is)."""
    if (meta.get("seed"), meta.get("num_train"), meta.get("num_test")) != (int(seed), n_train, n_test):
        return False
    if meta.get("family", "standard") != family:
        return False
    entries = meta.get("train", []) + meta.get("test", [])
    if shape is not None and any(e.get("shape") != [int(v) for v in shape] for e in entries):
        return False
    return spacing is None or all(e.get("spacing") == [round(float(v), 4) for v in spacing] for e in entries)


def _prepare_out_dir(out: Path):
    """Refuse a non-empty folder that is not a synthetic data set; drop stale cases of an old one."""
    if out.exists() and not out.is_dir():
        raise ScreenerError(f"{out}: exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if not _is_ours(out):
            raise ScreenerError(
                f"{out}: folder is not empty and holds no synthetic data set; choose a new or empty folder"
            )
        (out / "dataset.json").unlink(missing_ok=True)  # incomplete until rewritten at the end
        for f in out.glob(".dataset.json.*.tmp"):
            f.unlink()
        for sub in _SUBDIRS:
            for f in (out / sub).glob("*.nii.gz"):
                if _CASE_FILE.fullmatch(f.name):
                    f.unlink()
    for sub in _SUBDIRS:
        (out / sub).mkdir(parents=True, exist_ok=True)


def make_synthetic_dataset(
    out_dir,
    cases: int = 24,
    seed: int = 0,
    test_fraction: float = 0.25,
    test_cases: int | None = None,
    progress: bool = True,
    shape=None,
    spacing=None,
    overwrite: bool = False,
    family: str = "standard",
) -> dict:
    """Write the synthetic data set to ``out_dir`` and return what dataset.json holds.

    Layout: ``train/<case>.nii.gz`` (unlabeled), ``test/images/<case>.nii.gz`` and
    ``test/labels/<case>.nii.gz`` (uint8 lesion masks, same grid and affine), ``dataset.json``.
    ``test_cases`` overrides ``test_fraction``. Train and test cases are different patients.
    ``shape``/``spacing`` fix the grid of every case (small, fast data sets for tests).
    ``family`` picks the phantom family (``FAMILIES``; "shifted" is the benchmark's unseen one).
    A finished data set already in ``out_dir`` is kept when it is the one asked for; another one
    is replaced only with ``overwrite`` (runs planned on it would lose their cases).
    """
    cases, seed = as_number(cases, "cases", int, minimum=2), as_number(seed, "seed", int, minimum=0)
    test_cases = as_number(test_cases, "test-cases", int, minimum=1)
    if test_cases is None:
        if not 0 < float(test_fraction) < 1:
            raise ScreenerError(f"make-synthetic: test_fraction must be in (0, 1), got {test_fraction!r}")
        test_cases = int(round(cases * float(test_fraction)))
    n_test = int(min(max(int(test_cases), 1), cases - 1))
    n_train = cases - n_test
    if family not in FAMILIES:
        raise ScreenerError(f"make-synthetic: --family must be one of {', '.join(FAMILIES)}, got {family!r}")
    _check_shape_spacing(shape, spacing)
    out = Path(out_dir)
    existing = _finished_set(out) if out.is_dir() else None
    if existing is not None and not overwrite:
        if _same_request(existing, seed, n_train, n_test, shape, spacing, family):
            if progress:
                print(f"synthetic: {out} already holds this data set; kept", file=sys.stderr, flush=True)
            return existing
        raise ScreenerError(
            f"{out}: already holds another synthetic data set ({existing.get('num_train')} training + "
            f"{existing.get('num_test')} test cases, seed {existing.get('seed')}, family "
            f"{existing.get('family', 'standard')}), which runs planned on it "
            "read; choose another folder, or pass --overwrite true to replace it"
        )
    _prepare_out_dir(out)

    drng = np.random.default_rng(np.random.SeedSequence([int(seed), 3]))
    with_lesions = set(drng.permutation(n_train)[: int(round(0.25 * n_train))].tolist())
    used, plan = set(), []
    for split, count in ((1, n_train), (2, n_test)):
        for i in range(count):
            s = _case_seed(seed, split, i)
            while s in used:  # distinct patients even on a (vanishingly rare) seed collision
                s = (s + 1) % 2**32
            used.add(s)
            plan.append((split, i, s))

    meta = dict(
        name="screener-synthetic-ct",
        generator=GENERATOR,
        format_version=1,
        seed=int(seed),
        family=family,
        modality="CT",
        units="HU",
        num_train=n_train,
        num_test=n_test,
        tissue_classes={str(k): v for k, v in TISSUE_CLASSES.items()},
        lesion_kinds=list(LESION_KINDS),
        train=[],
        test=[],
    )
    for n_done, (split, i, s) in enumerate(plan):
        t_start = time.time()
        name = f"case_{n_done:04d}"
        if split == 1:
            ph = make_phantom(s, lesions=i in with_lesions, shape=shape, spacing=spacing, family=family)
            path = out / "train" / f"{name}.nii.gz"
            _save_nifti(ph.hu, ph.affine, path)
            entry = dict(case=name, image=f"train/{name}.nii.gz")
        else:
            ph = make_phantom(s, lesions=True, shape=shape, spacing=spacing, family=family)
            for retry in range(1, 6):  # a test case must hold a lesion
                if ph.lesion_kinds:
                    break
                s = _case_seed(seed, 2, 10**6 * retry + i)
                if s in used:
                    continue
                used.add(s)
                ph = make_phantom(s, lesions=True, shape=shape, spacing=spacing, family=family)
            if not ph.lesion_kinds:
                raise RuntimeError(f"synthetic test case {name}: no lesion could be placed")
            _save_nifti(ph.hu, ph.affine, out / "test" / "images" / f"{name}.nii.gz")
            _save_nifti(ph.lesion_mask, ph.affine, out / "test" / "labels" / f"{name}.nii.gz")
            entry = dict(
                case=name, image=f"test/images/{name}.nii.gz", label=f"test/labels/{name}.nii.gz", lesions=ph.lesions
            )
        entry.update(
            phantom_seed=s, shape=list(ph.hu.shape), spacing=[round(x, 4) for x in ph.spacing], protocol=ph.protocol
        )
        if split == 1:
            entry["unlabeled_lesions"] = len(ph.lesion_kinds)
        meta["train" if split == 1 else "test"].append(entry)
        if progress:
            print(
                f"synthetic: [{n_done + 1}/{cases}] {entry['image']} "
                f"{'x'.join(map(str, ph.hu.shape))} {time.time() - t_start:.1f}s",
                file=sys.stderr,
                flush=True,
            )
    _write_json(meta, out / "dataset.json")
    return meta


def make_synthetic(
    out_dir,
    cases: int = 24,
    seed: int = 0,
    test_fraction: float = 0.25,
    overwrite: bool = False,
    family: str = "standard",
) -> str:
    """CLI entry (``screener make-synthetic OUT_DIR --cases N --seed S``); returns a summary line."""
    meta = make_synthetic_dataset(
        out_dir, cases=cases, seed=seed, test_fraction=test_fraction, overwrite=overwrite, family=family
    )
    return f"wrote {meta['num_train']} training and {meta['num_test']} labeled test cases to {out_dir}"
