"""Inference speed-ups keep the maps: channels-last layout, threaded folder pipeline, torchrun sharding."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import write_ct_folder
from run_utils import make_random_run

TOLERANCE = 1e-4  # relative to the map's range; float32 reassociation only


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from screener_plans.planning.planner import plan

    root = tmp_path_factory.mktemp("speed")
    data = write_ct_folder(root / "data", 4, (56, 48, 28), (2.5, 2.5, 3.5), seed=20)
    plans = plan(
        data,
        root / "planned",
        device="cpu",
        workers=1,
        progress=False,
        overrides={"crop_size": [16, 16, 16], "spacing": [3.0, 3.0, 3.0], "inference.sw_batch_size": 4},
    )
    return {"data": data, "run": make_random_run(root, plans), "plans": plans}


def _maps(folder):
    return {p.name: np.asarray(nib.load(str(p)).dataobj) for p in sorted(folder.glob("*.nii.gz"))}


def test_channels_last_keeps_the_maps(env):
    from screener_plans.data.preprocess import preprocess_image
    from screener_plans.data.readers import find_cases, read_case
    from screener_plans.inference.loader import load_scorer
    from screener_plans.inference.sliding import ScorerInferer

    plans = env["plans"]
    img = read_case(find_cases(env["data"])[0])
    image, mask, meta = preprocess_image(img, plans)
    maps = []
    for channels_last in (False, True):
        scorer = load_scorer(env["run"], plans).eval()
        inferer = ScorerInferer(plans["crop_size"], 0.25, "gaussian", 4, amp=False, channels_last=channels_last)
        maps.append(inferer(scorer, image, meta["crop_origin_mm"], meta["spacing"], "cpu"))
    span = float(maps[0].max() - maps[0].min())
    assert span > 0
    assert float(np.abs(maps[0] - maps[1]).max()) <= TOLERANCE * span


def test_single_window_batches_are_scored_in_pairs_with_the_same_maps(env):
    """A batch of one window (sw_batch_size 1, or the last window of an odd count) runs as two
    copies on CPU, where conv3d is slow for a batch of one; the map is the one-window map."""
    from screener_plans.data.preprocess import preprocess_image
    from screener_plans.data.readers import find_cases, read_case
    from screener_plans.inference.loader import load_scorer
    from screener_plans.inference.sliding import ScorerInferer

    plans = env["plans"]
    img = read_case(find_cases(env["data"])[0])
    image, mask, meta = preprocess_image(img, plans)
    scorer = load_scorer(env["run"], plans).eval()
    batches = []
    inner = scorer.forward
    scorer.forward = lambda x, *a: batches.append(x.shape[0]) or inner(x, *a)
    single = ScorerInferer(plans["crop_size"], 0.25, "gaussian", 1, amp=False)
    got = single(scorer, image, meta["crop_origin_mm"], meta["spacing"], "cpu")
    assert batches and set(batches) == {2}
    scorer.forward = inner
    ref = ScorerInferer(plans["crop_size"], 0.25, "gaussian", 4, amp=False)(
        scorer, image, meta["crop_origin_mm"], meta["spacing"], "cpu"
    )
    span = float(ref.max() - ref.min())
    assert span > 0 and float(np.abs(got - ref).max()) <= TOLERANCE * span


@pytest.mark.slow
@pytest.mark.parametrize("overlap", [True, False])
def test_folder_pipeline_matches_case_by_case(env, tmp_path, overlap):
    """Over a folder, with background reading/writing threads or without, the maps are those of
    scoring each case alone."""
    from screener_plans.data.readers import find_cases
    from screener_plans.inference.loader import load_scorer
    from screener_plans.inference.predict import Predictor

    plans = env["plans"]
    pred = Predictor(
        env["run"], plans, load_scorer(env["run"], plans), "cpu", threshold=1.0, progress=False, overlap=overlap
    )
    summary = pred.run(env["data"], tmp_path / "folder")
    assert [d["case"] for d in summary["done"]] == [f"case_{i}" for i in range(4)]
    for case in find_cases(env["data"]):
        pred.predict_case(case, tmp_path / "one_by_one")
    a, b = _maps(tmp_path / "folder"), _maps(tmp_path / "one_by_one")
    assert a.keys() == b.keys() and len(a) == 4
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


@pytest.mark.slow
def test_rerun_skips_only_what_the_same_model_wrote(env, tmp_path):
    """Cases already scored are skipped on a re-run, but not when another model (or another
    calibration) wrote them: that is refused, and --overwrite replaces them."""
    from screener_plans.errors import ScreenerError
    from screener_plans.inference.loader import load_scorer
    from screener_plans.inference.predict import Predictor

    plans = env["plans"]
    scorer = load_scorer(env["run"], plans)

    def predictor(threshold, overwrite=False):
        return Predictor(env["run"], plans, scorer, "cpu", threshold=threshold, progress=False, overwrite=overwrite)

    out = tmp_path / "out"
    assert len(predictor(1.0).run(env["data"], out)["done"]) == 4
    assert len(predictor(1.0).run(env["data"], out)["skipped_existing"]) == 4
    with pytest.raises(ScreenerError, match="_regions.json: written by another model"):
        predictor(2.0).run(env["data"], out)
    assert len(predictor(2.0, overwrite=True).run(env["data"], out)["done"]) == 4
    assert json.loads((out / "case_0_regions.json").read_text())["threshold"] == 2.0


def test_output_folder_holding_the_inputs_is_refused(env, tmp_path):
    """`screener predict RUN DIR DIR` would replace each CT by its anomaly map: refused, untouched."""
    import shutil

    from screener_plans.errors import ScreenerError
    from screener_plans.inference.loader import load_scorer
    from screener_plans.inference.predict import Predictor

    inout = tmp_path / "inout"
    inout.mkdir()
    scan = sorted(env["data"].glob("*.nii.gz"))[0]
    shutil.copy(scan, inout / scan.name)
    before = (inout / scan.name).read_bytes()
    pred = Predictor(
        env["run"], env["plans"], load_scorer(env["run"], env["plans"]), "cpu", threshold=1.0, progress=False
    )
    for source in (inout, inout / scan.name):
        with pytest.raises(ScreenerError, match="the output folder holds the input scan"):
            pred.run(source, inout)
    assert (inout / scan.name).read_bytes() == before and sorted(inout.iterdir()) == [inout / scan.name]


def test_background_threads_only_where_they_have_a_core(monkeypatch):
    import torch

    from screener_plans import parallel
    from screener_plans.inference.executors import overlap_io

    threads = torch.get_num_threads()
    monkeypatch.setattr(parallel, "usable_cpus", lambda: threads)
    assert not overlap_io(torch.device("cpu"))  # 2 cores, 2 PyTorch threads: they would compete
    assert overlap_io(torch.device("cuda"))  # the GPU computes while the CPU reads
    monkeypatch.setattr(parallel, "usable_cpus", lambda: threads + 1)
    assert overlap_io(torch.device("cpu"))


@pytest.mark.slow
def test_torchrun_shards_cases_across_ranks(env, tmp_path):
    out = tmp_path / "out"
    env_vars = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "screener_plans.cli",
            "predict",
            str(env["run"]),
            str(env["data"]),
            str(out),
            "--device",
            "cpu",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_vars,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the ranks too, not only the launcher
        stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stderr[-3000:]
    text = stdout + stderr
    assert len(re.findall(r"scored 4 case\(s\), 0 already done, 0 skipped", text)) == 1, text
    for i in range(4):  # every case once, and only by its rank
        assert len(re.findall(rf"^\s+case_{i}: ", text, flags=re.M)) == 1, text
    assert sorted(_maps(out)) == [f"case_{i}.nii.gz" for i in range(4)]
    ref = tmp_path / "ref"
    from screener_plans.inference.predict import predict

    torch.set_num_threads(1)
    predict(env["run"], env["data"], ref, device="cpu", progress=False)
    for name, m in _maps(out).items():
        np.testing.assert_allclose(m, _maps(ref)[name], atol=1e-5)
