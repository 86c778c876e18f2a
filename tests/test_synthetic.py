"""Synthetic CT phantom generator and data set writer."""

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from screener_plans.errors import ScreenerError
from screener_plans.synthetic.anatomy import Tissue
from screener_plans.synthetic.phantoms import (
    LESION_KINDS,
    _sample_case,
    make_phantom,
    make_synthetic,
    make_synthetic_dataset,
)

SMALL = dict(shape=(72, 72, 40), spacing=(4.5, 4.5, 5.0))


@pytest.fixture(scope="module")
def plain():
    """A default-size phantom (random grid) in the non-contrast protocol."""
    return make_phantom(11, lesions=False, protocol="plain")


def _median(ph, tissue):
    m = ph.tissue == tissue
    assert m.sum() > 100, f"{Tissue(tissue).name} nearly absent"
    return float(np.median(ph.hu[m]))


def test_same_seed_same_arrays_and_different_seeds_differ():
    a, b = make_phantom(5, **SMALL), make_phantom(5, **SMALL)
    for name in ("hu", "tissue", "lesion_mask", "lesion_instances", "affine"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.lesion_kinds == b.lesion_kinds and a.spacing == b.spacing
    c = make_phantom(6, **SMALL)
    assert not np.array_equal(a.hu, c.hu)


def test_array_conventions(plain):
    ph = plain
    assert ph.hu.dtype == np.int16 and ph.tissue.dtype == np.uint8 and ph.lesion_mask.dtype == np.uint8
    assert ph.hu.shape == ph.tissue.shape == ph.lesion_mask.shape
    assert ph.hu.min() >= -1024 and ph.hu.max() <= 3071
    assert np.allclose(np.diag(ph.affine)[:3], ph.spacing) and np.allclose(ph.affine[3], [0, 0, 0, 1])
    assert ph.lesion_mask.sum() == 0 and ph.lesion_kinds == []
    # Air outside the body, at the corners of every slice.
    assert np.median(ph.hu[:4, :4, :]) < -950
    # RAS: liver on the patient's right (+x), vertebrae posterior (-y) of the body centre.
    xs = np.nonzero(ph.tissue == Tissue.LIVER)[0]
    body_x = np.nonzero(ph.tissue != Tissue.AIR)[0]
    assert xs.mean() > body_x.mean()
    body_y = np.nonzero(np.isin(ph.tissue, [Tissue.FAT, Tissue.MUSCLE]))[1]
    assert np.nonzero(ph.tissue == Tissue.BONE)[1].mean() < body_y.mean()


def test_tissue_hu_plausible(plain):
    assert -900 < _median(plain, Tissue.LUNG) < -780
    assert -125 < _median(plain, Tissue.FAT) < -75
    assert 45 < _median(plain, Tissue.LIVER) < 72
    assert 20 < _median(plain, Tissue.MUSCLE) < 70
    assert float(plain.hu[plain.tissue == Tissue.BONE].mean()) > 300
    assert 20 < _median(plain, Tissue.BLOOD) < 60
    # Contrast enhances blood and liver.
    ven = make_phantom(11, lesions=False, protocol="venous")
    assert _median(ven, Tissue.BLOOD) > _median(plain, Tissue.BLOOD) + 60
    assert 85 < _median(ven, Tissue.LIVER) < 125
    assert np.array_equal(ven.tissue, plain.tissue)  # the protocol changes HU only


def test_lesions_inside_organs_and_anatomy_unchanged():
    base = make_phantom(21, lesions=False, **SMALL)
    ph = make_phantom(21, lesions=4, **SMALL)
    assert 1 <= len(ph.lesion_kinds) <= 4 and set(ph.lesion_kinds) <= set(LESION_KINDS)
    assert ph.lesion_mask.sum() > 0
    assert np.array_equal(ph.lesion_mask > 0, ph.lesion_instances > 0)
    assert np.array_equal(ph.tissue == Tissue.LESION, ph.lesion_mask > 0)
    organ = {
        "lung_nodule": (Tissue.LUNG, Tissue.VESSEL, Tissue.AIRWAY, Tissue.SOFT),
        "ground_glass": (Tissue.LUNG, Tissue.VESSEL, Tissue.AIRWAY, Tissue.SOFT),
        "liver_mass": (Tissue.LIVER, Tissue.VESSEL),
        "kidney_mass": (Tissue.KIDNEY,),
    }
    for k, kind in enumerate(ph.lesion_kinds):
        m = ph.lesion_instances == k + 1
        assert m.sum() == ph.lesions[k]["voxels"] > 0
        assert np.isin(base.tissue[m], organ[kind]).all(), kind
    # Lesions change the image only near themselves (soft edge + blur): same anatomy and noise.
    near = ndimage.distance_transform_edt(ph.lesion_mask == 0) <= 9
    assert np.array_equal(ph.hu[~near], base.hu[~near])
    assert not np.array_equal(ph.hu[near], base.hu[near])


def test_lesions_visible_but_not_trivial(plain):
    grid = dict(shape=(112, 112, 56), spacing=(3.2, 3.2, 4.0), protocol="plain")
    ph, base = make_phantom(3, lesions=4, **grid), make_phantom(3, lesions=False, **grid)
    assert len(ph.lesion_kinds) >= 2
    for k, kind in enumerate(ph.lesion_kinds):
        m = ph.lesion_instances == k + 1
        diff = abs(float(ph.hu[m].mean()) - float(base.hu[m].mean()))
        assert diff > 20, (kind, diff)
    # Solid nodules (+10..+50 HU) have blood-like HU: intensity alone does not single them out.
    assert abs(_median(plain, Tissue.BLOOD) - 30) < 40


def test_grid_varies_in_documented_ranges():
    shapes, spacings, lengths = set(), set(), []
    for seed in range(40):
        grid, body = _sample_case(np.random.default_rng(seed), None, None)
        nx, ny, nz = grid.shape
        dx, dy, dz = grid.spacing
        assert 160 <= nx <= 224 and nx == ny and 56 <= nz <= 110
        assert 1.6 <= dx <= 2.25 and dx == dy and 2.0 <= dz <= 3.5
        assert nx * dx > 2 * body.at(grid.t0)["a"].max()  # the body fits the field of view
        shapes.add(grid.shape)
        spacings.add(grid.spacing)
        lengths.append(nz * dz)
    assert len(shapes) > 30 and len(spacings) > 30 and np.ptp(lengths) > 100


def test_bad_arguments():
    with pytest.raises(ScreenerError):
        make_phantom(0, shape=(8, 64, 64))
    with pytest.raises(ScreenerError):
        make_phantom(0, spacing=(1, 0, 1))
    with pytest.raises(ScreenerError):
        make_phantom(-1)
    with pytest.raises(ScreenerError):
        make_phantom(0, protocol="portal")
    with pytest.raises(ScreenerError):
        make_synthetic_dataset("/tmp/unused-synthetic", cases=1)


def test_dataset_layout_and_files(tmp_path):
    out = tmp_path / "syn"
    meta = make_synthetic_dataset(out, cases=5, seed=3, test_cases=2, progress=False, **SMALL)
    assert json.loads((out / "dataset.json").read_text()) == meta
    assert meta["num_train"] == 3 and meta["num_test"] == 2 and meta["seed"] == 3
    assert meta["tissue_classes"]["3"] == "lung" and meta["tissue_classes"]["9"] == "lesion"
    train = sorted(p.name for p in (out / "train").iterdir())
    assert train == [e["case"] + ".nii.gz" for e in meta["train"]]
    names = [e["case"] for e in meta["train"] + meta["test"]]
    assert len(set(names)) == 5 and all(n.startswith("case_") for n in names)
    seeds = [e["phantom_seed"] for e in meta["train"] + meta["test"]]
    assert len(set(seeds)) == 5  # train and test are different patients
    assert sum(e["unlabeled_lesions"] > 0 for e in meta["train"]) == 1  # ~25% of 3
    for e in meta["train"]:
        img = nib.load(out / e["image"])
        assert img.get_data_dtype() == np.int16 and list(img.shape) == e["shape"]
    for e in meta["test"]:
        img, lab = nib.load(out / e["image"]), nib.load(out / e["label"])
        assert img.shape == lab.shape and np.allclose(img.affine, lab.affine)
        assert img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
        hdr = img.header
        assert int(hdr["qform_code"]) == 1 and int(hdr["sform_code"]) == 1
        assert hdr.get_xyzt_units()[0] == "mm"
        assert np.allclose(hdr.get_zooms(), e["spacing"], atol=1e-3)
        y = np.asarray(lab.dataobj)
        assert set(np.unique(y)) == {0, 1} and e["lesions"]
        assert y.sum() == sum(les["voxels"] for les in e["lesions"])
        x = np.asarray(img.dataobj)
        assert np.median(x[y > 0]) > -1000  # lesions are inside the body
    assert not list(out.rglob(".*tmp*"))


def test_dataset_rewrite_and_refuse_foreign_folder(tmp_path):
    out = tmp_path / "syn"
    first = make_synthetic_dataset(out, cases=4, seed=0, test_cases=1, progress=False, **SMALL)
    stamp = (out / "train" / "case_0000.nii.gz").stat().st_mtime_ns
    # the same request keeps it as it is; another one is refused (runs planned on it read it) ...
    assert make_synthetic_dataset(out, cases=4, seed=0, test_cases=1, progress=False, **SMALL) == first
    assert (out / "train" / "case_0000.nii.gz").stat().st_mtime_ns == stamp
    with pytest.raises(ScreenerError, match=r"already holds another synthetic data set \(3 training \+ 1 test"):
        make_synthetic_dataset(out, cases=3, seed=1, test_cases=1, progress=False, **SMALL)
    # ... unless asked to replace it
    meta = make_synthetic_dataset(out, cases=3, seed=1, test_cases=1, progress=False, overwrite=True, **SMALL)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.nii.gz"))
    want = sorted([e["image"] for e in meta["train"] + meta["test"]] + [meta["test"][0]["label"]])
    assert files == want  # stale cases of the larger first run are gone
    # The remains of an interrupted run (cases, temp files, no dataset.json) are taken over.
    (out / "dataset.json").unlink()
    (out / "train" / ".case_0009.123.tmp.nii.gz").write_bytes(b"partial")
    make_synthetic_dataset(out, cases=2, seed=1, test_cases=1, progress=False, **SMALL)
    assert sorted(p.name for p in (out / "train").iterdir()) == ["case_0000.nii.gz"]
    # Anything else is refused and left alone.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ScreenerError):
        make_synthetic_dataset(other, cases=2, progress=False, **SMALL)
    assert (other / "notes.txt").read_text() == "keep me"
    nnunet = tmp_path / "nnunet"
    (nnunet / "train").mkdir(parents=True)
    (nnunet / "dataset.json").write_text(json.dumps({"name": "Task01"}))
    with pytest.raises(ScreenerError):
        make_synthetic_dataset(nnunet, cases=2, progress=False, **SMALL)


def test_cli_wrapper(tmp_path, monkeypatch):
    import screener_plans.synthetic.phantoms as syn

    real = syn.make_phantom
    monkeypatch.setattr(
        syn,
        "make_phantom",
        lambda seed, lesions=True, shape=None, spacing=None, family="standard": real(seed, lesions=lesions, **SMALL),
    )  # keep the test fast
    msg = make_synthetic(tmp_path / "d", cases=4, seed=4)
    assert "3 training" in msg and "1 labeled test" in msg
    meta = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert meta["seed"] == 4 and meta["test"][0]["lesions"]


@pytest.mark.slow
def test_shifted_family_is_another_distribution_with_documented_ranges():
    """The quality benchmark's unseen test family: deterministic, distinct from the standard one
    for the same seed, organ masses 15-60 HU above or below their host, thin to thick slices."""
    a, b = make_phantom(21, family="shifted", **SMALL), make_phantom(21, family="shifted", **SMALL)
    assert np.array_equal(a.hu, b.hu) and a.lesions == b.lesions
    assert not np.array_equal(a.hu, make_phantom(21, **SMALL).hu)
    contrasts, kinds, protocols = [], set(), set()
    for seed in range(40):
        ph = make_phantom(seed, lesions=4, family="shifted", **SMALL)
        protocols.add(ph.protocol)
        for lesion in ph.lesions:
            kinds.add(lesion["kind"])
            assert 1.5 <= lesion["radius_mm"] <= 20.5, lesion
            if "host_hu" in lesion:  # organ masses: contrast against the host tissue's HU
                contrasts.append(lesion["hu"] - lesion["host_hu"])
    assert kinds == set(LESION_KINDS) and "delayed" in protocols
    contrasts = np.array(contrasts)
    assert (contrasts > 0).any() and (contrasts < 0).any()  # hyper- and hypodense
    assert len(contrasts) > 10 and np.all((np.abs(contrasts) >= 15) & (np.abs(contrasts) <= 60)), contrasts
    spacings = [_sample_case(np.random.default_rng(s), None, None, family="shifted")[0].spacing[2] for s in range(40)]
    assert min(spacings) < 1.5 and max(spacings) > 4.0
    with pytest.raises(ScreenerError, match="family must be one of"):
        make_phantom(1, family="other")


def test_dataset_records_its_family_and_refuses_another(tmp_path):
    out = tmp_path / "syn"
    meta = make_synthetic_dataset(out, cases=3, seed=2, test_cases=1, progress=False, family="shifted", **SMALL)
    assert meta["family"] == "shifted" and json.loads((out / "dataset.json").read_text())["family"] == "shifted"
    with pytest.raises(ScreenerError, match="family shifted"):
        make_synthetic_dataset(out, cases=3, seed=2, test_cases=1, progress=False, **SMALL)
    with pytest.raises(ScreenerError, match="--family must be one of"):
        make_synthetic_dataset(tmp_path / "x", cases=3, progress=False, family="odd")
