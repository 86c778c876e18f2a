import stat

import numpy as np
import pytest
from conftest import simple_ct, write_nifti

from screener_plans.data.geometry import CaseGeometry
from screener_plans.data.preprocess import cached_cases, load_case, preprocess
from screener_plans.io_utils import _umask
from screener_plans.planning.planner import plan


def _flipped_permuted_affine(spacing, origin=(10.0, -20.0, 5.0)):
    """File axes (i, j, k) run along (-S, +R, -A): not RAS, forces reorientation."""
    aff = np.zeros((4, 4))
    aff[2, 0] = -spacing[0]
    aff[0, 1] = spacing[1]
    aff[1, 2] = -spacing[2]
    aff[:3, 3] = origin
    aff[3, 3] = 1
    return aff


@pytest.fixture
def dotted_case(tmp_path):
    """One non-RAS scan with a small bright cube at a known voxel, plus a normal companion."""
    d = tmp_path / "data"
    d.mkdir()
    ras = simple_ct((50, 44, 30), seed=1, noise=0.0)
    # file order (S, R, A) reversed where flipped; build by inverting the RAS mapping
    file_arr = np.transpose(ras, (2, 0, 1))[::-1, :, ::-1].copy()
    dot = (14, 20, 25)  # in file voxel order
    file_arr[dot[0] - 1 : dot[0] + 2, dot[1] - 1 : dot[1] + 2, dot[2] - 1 : dot[2] + 2] = 950.0
    spacing = (2.0, 1.2, 1.3)
    write_nifti(d / "dotted.nii.gz", file_arr, _flipped_permuted_affine(spacing))
    write_nifti(d / "other.nii.gz", simple_ct((50, 44, 30), seed=2), np.diag([1.2, 1.3, 2.0, 1.0]))
    return d, np.array(dot, dtype=float)


def test_point_maps_to_cache_voxel_and_back(dotted_case, tmp_path):
    data, dot = dotted_case
    run = tmp_path / "run"
    plans = plan(
        data,
        run,
        device="cpu",
        workers=1,
        progress=False,
        overrides=["spacing=[1.6, 1.6, 1.6]", "intensity.window=[-1000, 1000]"],
    )
    summary = preprocess(run, plans=plans, workers=1, progress=False)
    assert summary["done"] == 2 and not summary["errors"]
    image, mask, meta = load_case(run, "dotted")
    assert image.dtype == np.float16 and mask.dtype == np.uint8 and image.shape == mask.shape
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    geo = CaseGeometry(meta)
    p = geo.to_cache(dot)
    np.testing.assert_allclose(geo.to_original(p), dot, atol=1e-9)
    # the bright cube's centre of mass in the cache sits where the geometry says
    lo = np.floor(p).astype(int) - 4
    win = np.asarray(image[lo[0] : lo[0] + 10, lo[1] : lo[1] + 10, lo[2] : lo[2] + 10], dtype=np.float64)
    w = np.clip(win - 0.85, 0, None)  # only the cube (950 HU) is brighter than 850 HU
    centre = lo + np.array(
        [(w.sum(axis=tuple(a for a in range(3) if a != ax)) * np.arange(10)).sum() / w.sum() for ax in range(3)]
    )
    np.testing.assert_allclose(centre, p, atol=0.35)
    # spacing and the body crop are recorded
    np.testing.assert_allclose(meta["spacing"], [1.6, 1.6, 1.6], rtol=0.05)
    assert mask.mean() > 0.3


def test_preprocess_is_resumable(dotted_case, tmp_path):
    data, _ = dotted_case
    run = tmp_path / "run"
    plans = plan(data, run, device="cpu", workers=1, progress=False)
    assert preprocess(run, plans=plans, workers=1, progress=False)["done"] == 2
    # plans and case folders are as readable as plainly created ones (temporaries are owner-only)
    assert stat.S_IMODE((run / "plans.json").stat().st_mode) == 0o666 & ~_umask()
    assert stat.S_IMODE((run / "preprocessed" / "dotted").stat().st_mode) == 0o777 & ~_umask()
    again = preprocess(run, plans=plans, workers=1, progress=False)
    assert (again["done"], again["cached"], again["errors"]) == (0, 2, [])
    # a killed run leaves at most a hidden temp folder and no half-written case
    (run / "preprocessed" / ".other.abc.tmp").mkdir()
    import shutil

    shutil.rmtree(run / "preprocessed" / "other")
    assert cached_cases(run, plans) == ["dotted"]
    assert preprocess(run, plans=plans, workers=1, progress=False)["done"] == 1
    # a scan replaced by another under the same name is preprocessed again, not kept from the cache
    src = next(p for p in data.iterdir() if p.name.startswith("dotted"))
    shutil.copy(next(p for p in data.iterdir() if p.name.startswith("other")), src)
    again = preprocess(run, plans=plans, workers=1, progress=False)
    assert (again["done"], again["cached"]) == (1, 1)
    # changed plans values invalidate the cache
    plans["intensity"]["window"] = [-1000.0, 500.0]
    assert cached_cases(run, plans) == []


@pytest.mark.parametrize("shape", [(57, 52, 50), (60, 110, 30), (130, 50, 60), (200, 220, 90), (100, 100, 40)])
def test_resample_matches_monai_resize(shape):
    """The memory-lean resampler gives MONAI Resize's numbers (anti-aliased when shrinking)."""
    from monai.transforms import Resize

    from screener_plans.data.preprocess import resample

    vol = (np.random.default_rng(0).normal(0, 300, (120, 110, 60)) - 500).astype(np.float32)
    before = vol.copy()
    shrink = any(n > m for n, m in zip(vol.shape, shape))
    ref = np.asarray(
        Resize(spatial_size=shape, mode="trilinear", align_corners=False, anti_aliasing=shrink)(vol[None])
    )[0]
    out = resample(vol, shape)
    assert out.shape == shape and out.dtype == np.float32
    assert float(np.abs(out - ref).max()) < 1e-3  # HU; float32 rounding only
    np.testing.assert_array_equal(vol, before)  # the input is left alone
    # NIfTI volumes arrive in Fortran order: same numbers, C-ordered result, input untouched
    fortran = np.asfortranarray(vol)
    out_f = resample(fortran, shape)
    assert out_f.flags.c_contiguous and out_f.shape == shape
    assert float(np.abs(out_f - ref).max()) < 1e-3
    np.testing.assert_array_equal(fortran, before)


def test_threaded_smoothing_is_exactly_one_call(monkeypatch):
    """Smoothing in slabs across threads gives bit for bit what one scipy call gives."""
    from screener_plans.data import preprocess

    vol = np.random.default_rng(2).normal(size=(37, 41, 23)).astype(np.float32)
    results = []
    for threads in (1, 3, 8):
        monkeypatch.setattr(preprocess, "worker_threads", lambda t=threads: t)
        results.append(preprocess._gaussian_smooth(vol, (1.5, 0.0, 2.5)))
    for out in results[1:]:
        np.testing.assert_array_equal(out, results[0])


@pytest.mark.parametrize("order", ["C", "F"])
def test_to_ras_keeps_the_memory_layout(order):
    """Reorienting never copies a Fortran-ordered scan into C order; flips give the same voxels."""
    from screener_plans.data.geometry import from_ras, to_ras

    vol = np.asarray(np.random.default_rng(1).normal(size=(6, 7, 8)).astype(np.float32), order=order)
    lps = np.diag([-0.7, -0.7, 1.25, 1.0])  # an LPS scan: x and y flipped to reach RAS
    for affine in (np.diag([0.7, 0.7, 1.25, 1.0]), lps):
        ras, ras_affine, ornt = to_ras(vol, affine)
        assert ras.flags.f_contiguous if order == "F" else ras.flags.c_contiguous
        assert np.all(np.diag(ras_affine)[:3] > 0)
        np.testing.assert_array_equal(from_ras(ras, ornt), vol)
    ras, _, _ = to_ras(vol, lps)
    np.testing.assert_array_equal(ras, vol[::-1, ::-1, :])
