"""Inference outputs: restoring maps to the input grid, regions, calibration, overlays, writer."""

import json
import stat

import conftest
import nibabel as nib
import numpy as np
import pytest
from conftest import simple_ct

from screener_plans.data.body import body_mask
from screener_plans.data.geometry import CaseGeometry
from screener_plans.data.preprocess import preprocess_image
from screener_plans.data.readers import CaseImage
from screener_plans.errors import ScreenerError
from screener_plans.inference.calibration import ScoreQuantile, calibrate_threshold
from screener_plans.inference.overlay import render_overlay
from screener_plans.inference.regions import default_min_voxels, find_regions
from screener_plans.inference.restore import to_original_grid, to_original_mask
from screener_plans.inference.writer import write_case_outputs
from screener_plans.io_utils import _umask

SPACING = (1.2, 1.5, 2.0)  # file axes i, j, k


def oblique_affine(spacing=SPACING, degrees=20.0):
    return conftest.oblique_affine(spacing, degrees)


@pytest.fixture(scope="module")
def oblique_case():
    ras = simple_ct((40, 36, 24), seed=3, noise=0.0)
    file_arr = np.ascontiguousarray(np.transpose(ras, (2, 0, 1))[::-1, :, ::-1])  # (S-, R, A-) order
    img = CaseImage("obl", "/nowhere/obl.nii.gz", file_arr, oblique_affine())
    plans = {"spacing": [1.7, 1.7, 1.7], "intensity": {"window": [-1000, 1000]}}
    image, mask, meta = preprocess_image(img, plans)
    img.meta["body"] = np.transpose(body_mask(ras), (2, 0, 1))[::-1, :, ::-1]  # same order as the file
    return img, image, mask, meta


def cube_score(meta, mask, original_voxel, half=1):
    """A cache-space map: low noise in the body, high in a small cube at the voxel's cache position."""
    rng = np.random.default_rng(0)
    score = rng.uniform(0.0, 1.0, tuple(meta["shape"])).astype(np.float32)
    score[mask == 0] = -50.0  # whatever lies outside the body must not leak out
    c = np.round(CaseGeometry(meta).to_cache(original_voxel)).astype(int)
    score[tuple(slice(a - half, a + half + 1) for a in c)] = 10.0
    return score


def test_restore_oblique_lands_on_known_voxel(oblique_case):
    img, image, mask, meta = oblique_case
    target = np.array([11.0, 20.0, 15.0])  # file voxel order, inside the body
    score = cube_score(meta, mask, target)
    out = to_original_grid(score, mask, meta)
    assert out.dtype == np.float32 and out.shape == img.array.shape
    assert out[tuple(target.astype(int))] > 5.0
    high = np.argwhere(out > 5.0)
    assert len(high) > 0
    np.testing.assert_allclose(high.mean(axis=0), target, atol=1.0)
    # the outside of the body is exactly the lowest body score, nothing is below it
    body_min = float(score[mask > 0].min())
    body = to_original_mask(mask, meta)
    assert body.shape == out.shape and 0.2 < body.mean() < 0.95
    assert np.all(out[~body] == np.float32(body_min))
    assert float(out.min()) == np.float32(body_min)
    # the restored body matches the input's own body up to the resampling edge
    agree = (body == img.meta["body"]).mean()
    assert agree > 0.95


def test_restore_explicit_fill_and_no_mask(oblique_case):
    img, image, mask, meta = oblique_case
    score = np.ones(tuple(meta["shape"]), dtype=np.float32)
    out = to_original_grid(score, None, meta, fill=-7.0)
    # voxels outside the crop box get the fill, the crop keeps its value, edges blend
    assert out.min() == -7.0 and out.max() == 1.0
    assert out[11, 20, 15] == 1.0 and (out == -7.0).mean() > 0.05 and (out == 1.0).mean() > 0.5
    with pytest.raises(ValueError, match="shape"):
        to_original_grid(score[:-1], None, meta)


def test_regions_two_blobs_sorted_with_volumes_and_mm():
    affine = oblique_affine(spacing=(0.8, 1.25, 3.0))
    score = np.zeros((30, 30, 20), dtype=np.float32)
    score[2:5, 3:7, 4:6] = 2.0  # 3*4*2 = 24 voxels, max 2
    score[20:22, 20:23, 10:15] = 5.0  # 2*3*5 = 30 voxels, max 5
    score[21, 21, 12] = 6.0
    regions = find_regions(score, affine, threshold=1.0, min_voxels=1)
    assert [r["n_voxels"] for r in regions] == [30, 24]
    assert [r["id"] for r in regions] == [1, 2]
    assert regions[0]["max_score"] == 6.0 and regions[1]["max_score"] == 2.0
    assert regions[0]["max_voxel"] == [21, 21, 12]
    np.testing.assert_allclose(regions[0]["mean_score"], (29 * 5.0 + 6.0) / 30)
    voxel_ml = 0.8 * 1.25 * 3.0 / 1000.0
    np.testing.assert_allclose([r["volume_ml"] for r in regions], [30 * voxel_ml, 24 * voxel_ml])
    np.testing.assert_allclose(regions[1]["centroid_voxel"], [3.0, 4.5, 4.5])
    assert regions[1]["bbox_voxel"] == {"start": [2, 3, 4], "stop": [5, 7, 6]}
    for r in regions:
        expect = affine[:3, :3] @ np.array(r["centroid_voxel"]) + affine[:3, 3]
        np.testing.assert_allclose(r["centroid_mm"], expect, atol=2e-3)
    # min size, body mask and the cap
    assert [r["n_voxels"] for r in find_regions(score, affine, 1.0, min_voxels=25)] == [30]
    body = np.zeros(score.shape, bool)
    body[:10] = True
    assert [r["n_voxels"] for r in find_regions(score, affine, 1.0, min_voxels=1, body_mask=body)] == [24]
    capped, total = find_regions(score, affine, 1.0, min_voxels=1, max_regions=1, return_total=True)
    assert len(capped) == 1 and total == 2
    assert find_regions(score, affine, 100.0) == []


def test_regions_26_connectivity_and_default_min_size():
    score = np.zeros((10, 10, 10), dtype=np.float32)
    score[2, 2, 2] = score[3, 3, 3] = 1.0  # touch at a corner only
    score[7, 7, 7] = 0.5
    regions = find_regions(score, np.eye(4), threshold=0.1, min_voxels=1)
    assert [r["n_voxels"] for r in regions] == [2, 1]
    # default minimum is 0.03 mL: 30 voxels of 1 mm^3, 1 voxel of 3.2 mm^3 cubes
    assert default_min_voxels(np.eye(4)) == 30
    assert default_min_voxels(np.diag([3.2, 3.2, 3.2, 1])) == 1
    assert find_regions(score, np.eye(4), threshold=0.1) == []


def test_score_quantile_matches_numpy():
    rng = np.random.default_rng(1)
    maps = [rng.gamma(2.0, 3.0, (20, 20, 20)).astype(np.float32) * (1 + i) for i in range(3)]
    masks = [rng.random(m.shape) < 0.7 for m in maps]
    acc = ScoreQuantile()
    for m, k in zip(maps, masks):
        acc.update(m, k)
    pooled = np.concatenate([m[k] for m, k in zip(maps, masks)])
    assert acc.n == pooled.size
    for q in (0.01, 0.5, 0.9, 0.999):
        exact = np.quantile(pooled.astype(np.float64), q)
        got = acc.quantile(q)
        assert abs(got - exact) <= acc.bin_width(exact) + 1e-6 * abs(exact), (q, got, exact)
    result = calibrate_threshold(zip(maps, masks), quantile=0.999)
    assert result["n_voxels"] == pooled.size and result["n_cases"] == 3 and result["quantile"] == 0.999
    assert abs(result["threshold"] - np.quantile(pooled, 0.999)) <= result["resolution"] + 1e-4
    # a constant first map must not squeeze later maps into the end bins
    acc = ScoreQuantile()
    acc.update(np.zeros(1000, np.float32))
    acc.update(pooled)
    exact = np.quantile(np.concatenate([np.zeros(1000), pooled]), 0.99)
    assert abs(acc.quantile(0.99) - exact) <= acc.bin_width(exact) < 1e-2
    # fixed range: bins uniform, resolution (hi - lo) / bins
    fixed = ScoreQuantile(lo=0.0, hi=100.0, bins=1000)
    fixed.update(pooled)
    assert abs(fixed.quantile(0.5) - np.quantile(pooled, 0.5)) <= 0.1 + 1e-9
    with pytest.raises(ScreenerError):
        calibrate_threshold([np.zeros((2, 2, 2))] * 2, quantile=1.5)
    with pytest.raises(ScreenerError):
        calibrate_threshold([(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)))])
    with pytest.raises(ScreenerError, match="NaN"):
        ScoreQuantile().update(np.array([1.0, np.nan]))


def _read_png(path):
    """The PNG's RGB pixels (uint8), read by Pillow (an independent decoder)."""
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def _warm(rgb):
    """Where the (warm, inferno) overlay shows: red well above blue; the marker is green-blue."""
    rgb = rgb.astype(int)
    return rgb[..., 0] - rgb[..., 2]


def test_overlay_panels_follow_the_radiological_convention():
    # RAS volume 2 mm x 1 mm x 3 mm: extents 80, 60, 90 mm
    shape, spacing = (40, 60, 30), (2.0, 1.0, 3.0)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[20:, 30:, :] = 100.0  # patient right (RAS: x grows towards the right) and anterior
    score = np.zeros(shape, dtype=np.float32)
    score[5, 10, 25] = 1.0  # patient left, posterior, superior
    from screener_plans.inference.overlay import overlay_panels

    axial, coronal, sagittal = overlay_panels(hu, score, np.diag(list(spacing) + [1.0]), panel_px=90)
    # one mm per pixel: axial 60x80, coronal 90x80, sagittal 90x60 (rows x cols)
    assert [p.gray.shape for p in (axial, coronal, sagittal)] == [(60, 80), (90, 80), (90, 60)]
    assert [p.letters for p in (axial, coronal, sagittal)] == [
        ("R", "L", "A", "P"),
        ("R", "L", "S", "I"),
        ("A", "P", "S", "I"),
    ]
    # patient right is image left, anterior is up: the bright quadrant is top-left
    assert axial.gray[5, 5] > 0.5 and axial.gray[5, 75] < 0.1 and axial.gray[55, 5] < 0.1
    # the hot voxel (left, posterior) at the bottom right of the axial panel, marked there
    r, c = np.unravel_index(np.argmax(axial.heat), axial.heat.shape)
    assert r == 49 and c in (68, 69) and axial.point == (49, 69)  # row 59 - y, column 2 mm * (39 - x)
    r, c = np.unravel_index(np.argmax(coronal.heat), coronal.heat.shape)
    assert 12 <= r <= 14 and c in (68, 69)  # superior is up, patient left is image right
    r, c = np.unravel_index(np.argmax(sagittal.heat), sagittal.heat.shape)
    assert 12 <= r <= 14 and c == 49  # anterior is image left: posterior voxel on the right


def test_overlay_picture_places_panels_and_colour_bar(tmp_path):
    shape, spacing = (40, 60, 30), (2.0, 1.0, 3.0)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[20:, 30:, :] = 100.0
    score = np.zeros(shape, dtype=np.float32)
    score[3:8, 8:13, 23:28] = 1.0  # a small hot block: left, posterior, superior
    from screener_plans.inference import overlay

    affine = np.diag(list(spacing) + [1.0])
    rgb = render_overlay(hu, score, affine, threshold=0.5, panel_px=90)
    panels = overlay.overlay_panels(hu, score, affine, panel_px=90)
    origins, height, width = overlay.panel_origins(panels)
    assert rgb.dtype == np.uint8 and rgb.shape == (height, width, 3)
    (r0, c0), (h, w) = origins[0], panels[0].gray.shape
    assert (h, w) == (60, 80) and r0 == overlay.TITLE_PX + 15  # the shorter panel is centred
    axial = rgb[r0 : r0 + h, c0 : c0 + w]
    assert axial[5, 10].mean() > 100 and axial[5, 75].mean() < 20  # the CT, right-anterior bright
    warm = _warm(axial)
    r, c = np.unravel_index(np.argmax(warm), warm.shape)
    assert warm.max() > 80 and abs(r - 49) <= 3 and abs(c - 68) <= 5  # the overlay where the map is hot
    assert _warm(axial[:30]).max() < 30  # and nowhere near the anterior half
    marker = (axial[..., 1] > 200) & (axial[..., 0] < 60)
    assert marker[45:54, 55:66].any()  # the green ticks beside the point
    bar_col = origins[-1][1] + panels[-1].gray.shape[1] + overlay.GAP_PX
    bar = rgb[overlay.TITLE_PX + 6 : height - 14, bar_col + 3 : bar_col + overlay.COLORBAR_PX - 3].astype(int)
    assert bar[0].mean() > bar[-1].mean() + 60  # inferno: bright at the top score, dark at the start
    assert (rgb[:, bar_col + overlay.COLORBAR_PX + 2 :] > 120).any()  # its tick labels
    path = overlay.save_png(tmp_path / "o.png", rgb)
    np.testing.assert_array_equal(_read_png(path), rgb)
    assert [p.name for p in tmp_path.iterdir()] == ["o.png"]


def test_writer_outputs(oblique_case, tmp_path):
    img, image, mask, meta = oblique_case
    target = np.array([11.0, 20.0, 15.0])
    score = to_original_grid(cube_score(meta, mask, target), mask, meta)
    out = tmp_path / "out"
    res = write_case_outputs(
        out, "obl", score, img.affine, img.array, threshold=5.0, extra={"model": np.str_("x")}, min_voxels=1
    )
    assert sorted(p.name for p in out.iterdir()) == ["obl.nii.gz", "obl.png", "obl_regions.json"]
    for p in out.iterdir():  # as readable as a plainly created file, not owner-only like a temporary
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~_umask(), p
    nii = nib.load(res["nifti"])
    assert nii.shape == img.array.shape and nii.get_data_dtype() == np.float32
    np.testing.assert_allclose(nii.affine, img.affine, atol=1e-5)
    np.testing.assert_allclose(nii.get_fdata(), score)
    assert int(nii.header["sform_code"]) == 1 and int(nii.header["qform_code"]) == 1
    report = json.loads(open(res["regions_json"]).read())
    assert report["case"] == "obl" and report["model"] == "x" and report["threshold"] == 5.0
    assert report["n_regions"] == len(report["regions"]) == 1
    np.testing.assert_allclose(report["regions"][0]["centroid_voxel"], target, atol=1.0)
    _read_png(res["png"])
    with pytest.raises(ValueError):
        write_case_outputs(out, "obl", score, img.affine, img.array, 5.0, extra={"regions": 1})


@pytest.mark.parametrize("threads,backend", [(1, "isal"), (3, "isal"), (3, "zlib")])
def test_threaded_nifti_gz_is_nibabels_file(tmp_path, monkeypatch, threads, backend):
    """The anomaly map written as many gzip members (by ISA-L or by zlib) decompresses to
    exactly the bytes nibabel writes for the same image, and loads back unchanged."""
    import gzip

    from screener_plans import gzip_codec
    from screener_plans.inference import nifti_gz
    from screener_plans.inference.writer import save_nifti

    if backend == "zlib":
        monkeypatch.setattr(gzip_codec, "_fast", None)
    else:
        assert gzip_codec.BACKEND == "isal"  # a declared dependency: installed with screener

    monkeypatch.setattr(nifti_gz, "SLAB_BYTES", 3 * 9 * 10 * 4)  # a few z-slices per member
    rng = np.random.default_rng(0)
    score = rng.normal(size=(9, 10, 11)).astype(np.float32)
    affine = np.array([[0.0, -0.8, 0.0, 10.0], [0.7, 0.0, 0.0, -5.0], [0.0, 0.0, 2.5, 3.0], [0, 0, 0, 1]])
    monkeypatch.setattr(nifti_gz, "worker_threads", lambda: threads)
    path = tmp_path / "case.nii.gz"
    save_nifti(path, score, affine)
    raw = path.read_bytes()
    assert raw.count(b"\x1f\x8b\x08") >= 4  # header member + several data members

    ref = tmp_path / "ref.nii"
    img = nib.Nifti1Image(score, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, ref)
    assert gzip.decompress(raw) == ref.read_bytes()

    back = nib.load(path)
    np.testing.assert_array_equal(np.asarray(back.dataobj), score)
    np.testing.assert_allclose(back.affine, affine, atol=1e-6)
    assert back.header.get_sform(coded=True)[1] == 1


def test_direction_letters_leave_the_overlay_visible():
    from screener_plans.inference import overlay

    heat = np.zeros((60, 80), dtype=np.float32)
    panel = overlay.Panel("axial", np.zeros((60, 80)), heat, (30, 40), ("R", "L", "A", "P"))
    assert [label[0] for label in overlay.direction_labels(panel, start=0.5)] == ["R", "L", "A", "P"]
    heat[3, 40] = 1.0  # an overlay pixel where the top letter would go
    assert [label[0] for label in overlay.direction_labels(panel, start=0.5)] == ["R", "L", "P"]
