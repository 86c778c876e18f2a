"""Every command on a corpus of bad inputs: the right result, or one line naming the file and the problem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bad_inputs import BAD, SPACING, VALID, write_corpus
from conftest import ras_affine, simple_ct, write_nifti
from run_utils import make_random_run

from screener_plans.cli import main
from screener_plans.errors import ScreenerError


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a second thread only waits
    root = tmp_path_factory.mktemp("bad")
    corpus = write_corpus(root / "corpus")
    from screener_plans.planning.planner import plan

    plans = plan(
        corpus["good"].folder,
        root / "planned",
        device="cpu",
        workers=1,
        progress=False,
        overrides={"crop_size": [16, 16, 16], "spacing": [4.0, 4.0, 4.0], "inference.sw_batch_size": 8},
    )
    run = make_random_run(root, plans)
    yield {"root": root, "corpus": corpus, "run": run}
    torch.set_num_threads(threads)


def _run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("screener: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _names_file_and_problem(line: str, entry) -> None:
    assert entry.needle in line, line
    assert str(entry.path) in line or str(entry.path.resolve()) in line, line


@pytest.mark.parametrize("kind", BAD)
def test_plan_refuses_bad_input(env, kind, tmp_path, capsys):
    entry = env["corpus"][kind]
    code, err = _run(["plan", entry.folder, tmp_path / "run", "--workers", 1], capsys)
    assert code == 2
    _names_file_and_problem(_one_error_line(err), entry)
    assert not (tmp_path / "run" / "plans.json").exists()


@pytest.mark.parametrize("kind", VALID)
def test_plan_accepts_awkward_valid_input(env, kind, tmp_path, capsys):
    code, err = _run(["plan", env["corpus"][kind].folder, tmp_path / "run", "--workers", 1], capsys)
    assert code == 0, err
    assert "planned 1 cases" in err


def _run_copy(env, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(env["run"], run)
    return run


@pytest.mark.parametrize("kind", BAD)
def test_preprocess_refuses_bad_input(env, kind, tmp_path, capsys):
    """The planned case 'scan' has been replaced by a bad file: one line, and no cache entry for it."""
    entry = env["corpus"][kind]
    run = _run_copy(env, tmp_path)
    code, err = _run(["preprocess", run, "--data-dir", entry.folder, "--workers", 1], capsys)
    assert code == 2
    _names_file_and_problem(_one_error_line(err), entry)
    cache = run / "preprocessed"
    assert not cache.exists() or not list(cache.iterdir())


@pytest.mark.parametrize("kind", BAD)
def test_predict_refuses_bad_input(env, kind, tmp_path, capsys):
    entry = env["corpus"][kind]
    out = tmp_path / "out"
    code, err = _run(["predict", env["run"], entry.folder, out, "--device", "cpu"], capsys)
    assert code == 2
    line = _one_error_line(err)
    _names_file_and_problem(line, entry)
    assert not out.exists()  # nothing half-written, not even the empty output folder it made


def _body_agreement(score: np.ndarray, hu: np.ndarray, affine: np.ndarray) -> float:
    """Share of voxels where 'scored above the outside-of-body value' agrees with the body seen in the
    input itself (HU above -500 with the lungs filled in, axial slice by axial slice)."""
    from scipy.ndimage import binary_fill_holes

    axial = int(np.argmax(np.abs(affine[2, :3])))  # the file axis that runs head-foot
    tissue = np.moveaxis(hu > -500, axial, 0)
    body = np.moveaxis(np.stack([binary_fill_holes(s) for s in tissue]), 0, axial)
    return float(((score > score.min()) == body).mean())


@pytest.mark.parametrize("kind", VALID)
def test_predict_awkward_valid_input_is_aligned(env, kind, tmp_path, capsys):
    """Oblique, permuted and flipped scans and mixed DICOM series: the map lies on the input's own grid."""
    from screener_plans.data.readers import find_cases, read_case

    entry = env["corpus"][kind]
    out = tmp_path / "out"
    code, err = _run(["predict", env["run"], entry.folder, out, "--device", "cpu"], capsys)
    assert code == 0, err
    img = read_case(find_cases(entry.folder)[0])
    pred = nib.load(str(out / "scan.nii.gz"))
    assert pred.shape == img.array.shape
    np.testing.assert_allclose(pred.affine, img.affine, atol=1e-4)
    score = np.asarray(pred.dataobj)
    # The body found in the map is the input's body voxel for voxel (up to the resampling edge);
    # a wrong flip or axis order would leave about half of them disagreeing.
    assert _body_agreement(score, img.array, img.affine) > 0.95
    assert (out / "scan_regions.json").exists() and (out / "scan.png").exists()


def test_predict_single_bad_file(env, tmp_path, capsys):
    entry = env["corpus"]["truncated"]
    code, err = _run(["predict", env["run"], entry.path, tmp_path / "out", "--device", "cpu"], capsys)
    assert code == 2
    _names_file_and_problem(_one_error_line(err), entry)


# Prediction files that `evaluate` must refuse, with the problem it must name.
EVAL_BAD = {
    "empty": "cannot read NIfTI",
    "truncated": "cannot read",
    "garbage": "cannot read NIfTI",
    "not_nifti": "cannot read NIfTI",
    "unreadable": "cannot be read",
    "2d": "shape mismatch",
    "4d": "shape mismatch",
    "nan": "NaN",
}


@pytest.mark.parametrize("kind", sorted(EVAL_BAD))
def test_evaluate_refuses_bad_prediction(env, kind, tmp_path, capsys):
    entry = env["corpus"][kind]
    labels = tmp_path / "labels"
    labels.mkdir()
    lab = np.zeros(simple_ct((40, 36, 20)).shape, dtype=np.uint8)
    lab[10:14, 10:14, 8:12] = 1
    write_nifti(labels / "scan.nii.gz", lab, ras_affine(SPACING), dtype=np.uint8)
    code, err = _run(["evaluate", entry.folder, labels], capsys)
    assert code == 2
    line = _one_error_line(err)
    assert EVAL_BAD[kind] in line, line
    assert str(entry.path) in line, line


def test_evaluate_refuses_a_ct_given_as_labels(env, tmp_path, capsys):
    good = env["corpus"]["good"]
    maps = tmp_path / "maps"
    maps.mkdir()
    ct = nib.load(str(good.path))
    nib.save(nib.Nifti1Image(np.zeros(ct.shape, np.float32), ct.affine), str(maps / good.path.name))
    code, err = _run(["evaluate", str(maps), good.folder], capsys)
    assert code == 2
    line = _one_error_line(err)
    assert "not a label mask" in line and str(good.path) in line, line
    code, err = _run(["evaluate", good.folder, good.folder], capsys)  # the CT as both maps and labels
    assert code == 2
    line = _one_error_line(err)
    assert "looks like a CT scan, not an anomaly map" in line and str(good.path) in line, line


def test_mixed_folder_good_cases_go_through_with_skip_bad(env, tmp_path, capsys):
    corpus = env["corpus"]
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for kind in ("good", "oblique", "empty", "2d", "nan", "wrong_extension", "mislabeled", "dicom_no_rescale"):
        src = corpus[kind].path
        dst = mixed / src.name.replace("scan", kind)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    run = tmp_path / "run"
    code, err = _run(["plan", mixed, run, "--workers", 1], capsys)
    assert code == 2 and "--skip-bad" in _one_error_line(err)
    code, err = _run(
        [
            "plan",
            mixed,
            run,
            "--workers",
            1,
            "--skip-bad",
            "--set",
            "crop_size=[16, 16, 16]",
            "--set",
            "spacing=[4.0, 4.0, 4.0]",
        ],
        capsys,
    )
    assert code == 0, err
    assert "planned 2 cases" in err and err.count("skipped ") == 6
    code, err = _run(["preprocess", run, "--workers", 1], capsys)
    assert code == 0 and "preprocessed 2 case(s)" in err, err
    out = tmp_path / "out"
    code, err = _run(["predict", env["run"], mixed, out, "--device", "cpu"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["good.nii.gz", "oblique.nii.gz"]
    assert "scored 2 case(s)" in err and err.count("skipped /") >= 6
    # "false" as typed in a shell (fire passes it as text; bool("false") would be True)
    code, err = _run(
        ["predict", env["run"], mixed, tmp_path / "out2", "--device", "cpu", "--skip-bad", "false"], capsys
    )
    line = _one_error_line(err)
    assert code == 2 and f"{mixed}/wrong_extension.img: unsupported format" in line, line
    code, err = _run(["predict", env["run"], mixed, tmp_path / "out2", "--overwrite", "maybe"], capsys)
    assert code == 2 and "--overwrite must be true or false, got 'maybe'" in _one_error_line(err)


@pytest.mark.parametrize("key, value", [("spacing", [3.0, 3.0, 3.0]), ("window", [-500.0, 500.0])])
def test_predict_refuses_plans_edited_after_training(env, tmp_path, capsys, key, value):
    run = _run_copy(env, tmp_path)
    plans = json.loads((run / "plans.json").read_text())
    if key == "spacing":
        plans["spacing"] = value
    else:
        plans["intensity"]["window"] = value
    (run / "plans.json").write_text(json.dumps(plans))
    code, err = _run(["predict", run, env["corpus"]["good"].folder, tmp_path / "out", "--device", "cpu"], capsys)
    assert code == 2
    line = _one_error_line(err)
    assert f"trained with {key}" in line and f"now has {value}" in line, line
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_train_without_stage_does_not_train_an_unused_descriptor(env, tmp_path, capsys):
    from screener_plans.cli import _default_stage

    plans = json.loads((env["root"] / "planned" / "plans.json").read_text())
    assert plans["density"]["kind"] == "contrastive"  # the tiny preset's default scorer: no descriptor
    contrastive_run = make_random_run(tmp_path / "c", plans, condition="none", density="contrastive")
    with pytest.raises(ScreenerError, match=r"to train: --stage density \(or"):
        _default_stage(contrastive_run)
    structure_run = make_random_run(tmp_path / "s", plans, features="structure")
    code, err = _run(["train", structure_run], capsys)
    assert code == 2
    line = _one_error_line(err)
    assert "uses no descriptor" in line and "--stage condition, then --stage density" in line, line  # masked
    no_condition = make_random_run(tmp_path, plans, condition="none", density="mixture", features="structure")
    with pytest.raises(ScreenerError, match=r"to train: --stage density \(or"):
        _default_stage(no_condition)
    descriptor_run = make_random_run(tmp_path, plans, features="descriptor")
    assert _default_stage(descriptor_run) == "descriptor"  # the paper's scorer: as before
