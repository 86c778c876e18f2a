import re
from pathlib import Path

import numpy as np
import pytest
from conftest import ras_affine, simple_ct, write_nifti, write_raw_pixdim
from dicom_utils import write_dicom_series

from screener_plans.data.checks import validate_ct
from screener_plans.data.readers import case_name, find_cases, read_case
from screener_plans.errors import BadCaseError, ScreenerError


def test_case_names():
    assert case_name("/a/b/ct_01.nii.gz") == "ct_01"
    assert case_name("x.mha") == "x"
    assert case_name("/a/series_7") == "series_7"


def test_nifti_roundtrip(tmp_path):
    hu = simple_ct((20, 18, 12))
    aff = ras_affine((0.8, 0.9, 2.0), origin=(-10, 5, 3))
    write_nifti(tmp_path / "a.nii.gz", hu, aff)
    img = read_case(find_cases(tmp_path)[0])
    np.testing.assert_allclose(img.array, np.round(hu), atol=0.5)
    np.testing.assert_allclose(img.affine, aff, atol=1e-5)
    np.testing.assert_allclose(img.spacing, (0.8, 0.9, 2.0), atol=1e-5)


@pytest.mark.parametrize("nifti2", [False, True])
def test_nii_gz_reader_gives_monais_image(tmp_path, nifti2):
    """Inflating a .nii.gz in one call (GzipNibabelReader) gives MONAI's NibabelReader's voxels,
    affine and metadata, for NIfTI-1 and NIfTI-2, scaled and in the file's own memory order."""
    import nibabel as nib
    from monai.data import NibabelReader

    from screener_plans.data.nifti_reader import GzipNibabelReader

    hu = simple_ct((21, 18, 13))
    aff = ras_affine((0.8, 0.9, 2.0), origin=(-10, 5, 3))
    cls = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    img = cls(((hu + 1024) / 2).astype(np.int16), aff)
    img.header.set_slope_inter(2.0, -1024.0)
    path = tmp_path / "a.nii.gz"
    nib.save(img, path)
    ours, ref = GzipNibabelReader(), NibabelReader()
    data, meta = ours.get_data(ours.read(path))
    data_ref, meta_ref = ref.get_data(ref.read(path))
    np.testing.assert_array_equal(data, data_ref)
    assert data.flags["F_CONTIGUOUS"] == data_ref.flags["F_CONTIGUOUS"]
    np.testing.assert_array_equal(meta["affine"], meta_ref["affine"])
    assert sorted(meta) == sorted(meta_ref)
    np.testing.assert_allclose(read_case(find_cases(tmp_path)[0]).array, hu, atol=2.0)  # stored in 2 HU steps


def test_gzip_codec_round_trip_in_both_backends(monkeypatch):
    """Members from either backend are standard gzip (read by the standard library) and
    concatenated members decompress to the concatenated data."""
    import gzip

    from screener_plans import gzip_codec

    data = np.random.default_rng(0).integers(0, 50, 100_000).astype(np.int16).tobytes()
    fast = gzip_codec.compress(data) + gzip_codec.compress(b"tail")
    monkeypatch.setattr(gzip_codec, "_fast", None)
    slow = gzip_codec.compress(data) + gzip_codec.compress(b"tail")
    for stream in (fast, slow):
        assert gzip.decompress(stream) == gzip_codec.decompress(stream) == data + b"tail"
    assert gzip_codec.compress(data) == gzip_codec.compress(data)  # no timestamp: same bytes


def test_nrrd_and_mha(tmp_path):
    nrrd = pytest.importorskip("nrrd")
    itk = pytest.importorskip("itk")
    hu = simple_ct((20, 18, 12)).round().astype(np.int16)
    nrrd.write(
        str(tmp_path / "b.nrrd"),
        hu,
        {
            "space": "left-posterior-superior",
            "space directions": np.diag([0.7, 0.8, 2.5]),
            "space origin": [0.0, 0.0, 0.0],
        },
    )
    # ITK arrays are (Z, Y, X); the file's x axis is our first axis.
    im = itk.image_from_array(np.ascontiguousarray(hu.transpose(2, 1, 0)))
    im.SetSpacing([0.7, 0.8, 2.5])
    itk.imwrite(im, str(tmp_path / "c.mha"))
    cases = {c.name: c for c in find_cases(tmp_path)}
    assert set(cases) == {"b", "c"}
    for name in ("b", "c"):
        img = read_case(cases[name])
        assert img.array.shape == hu.shape
        np.testing.assert_allclose(img.array, hu)
        # LPS on disk -> RAS affine: x and y flip sign
        np.testing.assert_allclose(np.diag(img.affine)[:3], (-0.7, -0.8, 2.5), atol=1e-5)


def test_dicom_series(tmp_path):
    pytest.importorskip("pydicom")
    hu = simple_ct((24, 20, 10))
    write_dicom_series(tmp_path / "patient1", hu, spacing=(1.2, 1.0, 2.5))
    (case,) = find_cases(tmp_path)
    assert case.name == "patient1" and case.kind == "dicom" and len(case.files) == 10
    img = read_case(case)
    np.testing.assert_allclose(img.array, np.clip(np.round(hu), -1024, None))
    np.testing.assert_allclose(np.diag(img.affine)[:3], (-1.2, -1.0, 2.5), atol=1e-5)
    validate_ct(img)


def test_dicom_folder_with_several_series_takes_largest_ct(tmp_path, caplog):
    pytest.importorskip("pydicom")
    big = simple_ct((24, 20, 12), seed=1)
    write_dicom_series(tmp_path / "p", big, series_uid="1.2.3.4.100")
    write_dicom_series(tmp_path / "p", simple_ct((24, 20, 5), seed=2), series_uid="1.2.3.4.200")
    img = read_case(find_cases(tmp_path)[0])
    assert img.array.shape == (24, 20, 12)
    assert "2 series" in img.meta["series_note"]
    np.testing.assert_allclose(img.array, np.clip(np.round(big), -1024, None), atol=1)


def test_dicom_without_rescale_is_refused(tmp_path):
    pytest.importorskip("pydicom")
    write_dicom_series(tmp_path / "raw", simple_ct((16, 16, 10)), rescale=False)
    img = read_case(find_cases(tmp_path)[0])
    with pytest.raises(BadCaseError, match="without RescaleSlope/RescaleIntercept"):
        validate_ct(img)


def test_non_ct_dicom_modality_is_refused(tmp_path):
    pytest.importorskip("pydicom")
    write_dicom_series(tmp_path / "mr", simple_ct((16, 16, 10)), modality="MR")
    with pytest.raises(BadCaseError, match="no CT series"):
        read_case(find_cases(tmp_path)[0])


@pytest.mark.parametrize("fault", ["missing", "duplicate"])
def test_dicom_series_with_a_missing_or_repeated_slice_is_refused(tmp_path, fault):
    """MONAI's reader would spread the slices over the gap (or stack the copy) without a word,
    shifting every position after it."""
    pytest.importorskip("pydicom")
    folder = write_dicom_series(tmp_path / "p", simple_ct((16, 16, 10)), spacing=(1.0, 1.0, 2.0))
    files = sorted(folder.iterdir())
    if fault == "missing":
        files[4].unlink()
    else:
        import pydicom

        ds = pydicom.dcmread(files[4])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.999"
        ds.save_as(folder / "copy.dcm")
    match = "uneven slice spacing: 4.00 mm" if fault == "missing" else "two slices at the same position"
    with pytest.raises(BadCaseError, match=match) as info:
        read_case(find_cases(tmp_path)[0])
    assert str(folder) in str(info.value)


def test_bad_files(tmp_path):
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    write_nifti(tmp_path / "good.nii.gz", simple_ct((16, 16, 10)), ras_affine())
    data = (tmp_path / "good.nii.gz").read_bytes()
    (tmp_path / "trunc.nii.gz").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.docx").write_bytes(b"hello")
    (tmp_path / "fake.nii").write_bytes(b"this is not nifti at all" * 20)
    cases, bad = find_cases(tmp_path, with_bad=True)
    assert [b.path.endswith("notes.docx") for b in bad] == [True]
    assert "unsupported format" in bad[0].reason
    by_name = {c.name: c for c in cases}
    with pytest.raises(BadCaseError, match="empty file"):
        read_case(by_name["empty"])
    with pytest.raises(BadCaseError, match="trunc.nii.gz"):
        read_case(by_name["trunc"])
    with pytest.raises(BadCaseError, match="fake.nii"):
        read_case(by_name["fake"])


def test_misnamed_and_incomplete_files_say_what_is_wrong(tmp_path):
    import gzip
    import os

    write_nifti(tmp_path / "src.nii", simple_ct((16, 16, 10)), ras_affine())
    raw = (tmp_path / "src.nii").read_bytes()
    (tmp_path / "src.nii").unlink()
    (tmp_path / "plain.nii.gz").write_bytes(raw)  # an uncompressed NIfTI named .gz
    (tmp_path / "packed.nii").write_bytes(gzip.compress(raw))  # a compressed one named .nii
    (tmp_path / "meta.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 16 16 10\nElementType = MET_SHORT\nElementDataFile = meta.raw\n"
    )
    os.symlink("loop_b", tmp_path / "loop_a")
    os.symlink("loop_a", tmp_path / "loop_b")
    cases, bad = find_cases(tmp_path, with_bad=True)  # the loop is no traceback
    assert sorted(Path(b.path).name for b in bad) == ["loop_a", "loop_b"]
    assert all("broken link" in b.reason for b in bad)
    with pytest.raises(ScreenerError, match="loop_a: broken link to loop_b"):
        find_cases(tmp_path / "loop_a")  # given as the input itself
    by_name = {c.name: c for c in cases}
    expect = {
        "plain": "not gzip-compressed although named .nii.gz",
        "packed": "gzip-compressed although named .nii",
        "meta": "meta.raw named by its header (ElementDataFile) is missing",
    }
    for name, message in expect.items():
        if name == "meta":
            pytest.importorskip("itk")
        with pytest.raises(BadCaseError, match=re.escape(message)):
            read_case(by_name[name])


def test_prediction_folder_inside_the_data_folder_is_passed_over(tmp_path):
    """`screener predict DATA RUN DATA/out`: a re-run (or `plan DATA`) does not take DATA/out for a case."""
    write_nifti(tmp_path / "a.nii.gz", simple_ct((16, 16, 10)), ras_affine())
    (tmp_path / "out").mkdir()
    write_nifti(tmp_path / "out" / "a.nii.gz", np.zeros((16, 16, 10), np.float32), ras_affine())
    (tmp_path / "out" / "a_regions.json").write_text("{}")
    cases, bad = find_cases(tmp_path, with_bad=True)
    assert [c.name for c in cases] == ["a"] and bad == []


def test_missing_folder_or_file_is_named_as_such():
    with pytest.raises(ScreenerError, match="folder does not exist"):
        find_cases("/nonexistent/folder")
    with pytest.raises(ScreenerError, match=r"scan\.nii\.gz: file does not exist"):
        find_cases("/nonexistent/scan.nii.gz")


def test_folder_of_image_files_inside_the_data_folder_is_pointed_out(tmp_path):
    """``make-synthetic`` writes OUT/train and OUT/test; giving OUT itself says what to give instead."""
    (tmp_path / "train").mkdir()
    write_nifti(tmp_path / "train" / "a.nii.gz", simple_ct((16, 16, 10)), ras_affine())
    (tmp_path / "test" / "images").mkdir(parents=True)
    write_nifti(tmp_path / "test" / "images" / "b.nii.gz", simple_ct((16, 16, 10)), ras_affine())
    (tmp_path / "empty").mkdir()
    cases, bad = find_cases(tmp_path, with_bad=True)
    reasons = {Path(b.path).name: b.reason for b in bad}
    assert cases == [] and "give it as the data folder itself" in reasons["train"]
    assert f"image files are in {tmp_path / 'test' / 'images'}; give that folder as the data folder" in reasons["test"]
    assert reasons["empty"] == "folder holds no DICOM files"


@pytest.mark.parametrize("shape,match", [((32, 32), "2D"), ((32, 32, 1), "2D"), ((16, 16, 12, 3), "4D")])
def test_dimensionality_checks(tmp_path, shape, match):
    write_nifti(
        tmp_path / "x.nii.gz", np.full(shape, -1000) + np.arange(np.prod(shape)).reshape(shape) % 900, np.eye(4)
    )
    with pytest.raises(BadCaseError, match=match):
        validate_ct(read_case(find_cases(tmp_path)[0]))


def test_intensity_checks(tmp_path):
    mri = np.abs(simple_ct((16, 16, 12))) / 10
    write_nifti(tmp_path / "mri.nii.gz", mri, ras_affine())
    write_nifti(tmp_path / "const.nii.gz", np.zeros((16, 16, 12)), ras_affine())
    nan = simple_ct((16, 16, 12))
    nan[3, 3, 3] = np.nan
    write_nifti(tmp_path / "nan.nii.gz", nan, ras_affine(), dtype=np.float32)
    got = {}
    for c in find_cases(tmp_path):
        with pytest.raises(BadCaseError) as e:
            validate_ct(read_case(c))
        got[c.name] = str(e.value)
    assert "do not look like CT" in got["mri"] and "mri.nii.gz" in got["mri"]
    assert "constant volume" in got["const"]
    assert "1 NaN/inf" in got["nan"]


def test_spacing_checks(tmp_path):
    write_nifti(tmp_path / "huge.nii.gz", simple_ct((16, 16, 12)), ras_affine((1, 1, 50)))
    for name, dims in (("zero", (1.0, 0.0, 1.0)), ("negative", (1.0, -1.0, 1.0))):
        write_raw_pixdim(tmp_path / f"{name}.nii.gz", simple_ct((16, 16, 12)), dims)
    msgs = {}
    for c in find_cases(tmp_path):
        with pytest.raises(BadCaseError) as e:
            validate_ct(read_case(c))
        msgs[c.name] = str(e.value)
    assert "implausible voxel spacing [1, 1, 50] mm" in msgs["huge"]
    assert "spacing" in msgs["zero"] and "zero.nii.gz" in msgs["zero"]
    assert "spacing" in msgs["negative"]
